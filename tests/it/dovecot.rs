//! A real Dovecot IMAP server for the inbound tests, started with a throwaway config on a
//! loopback port and stopped when dropped. Debian's `dovecot-imapd` provides it (installed
//! by `.ci/run`); without it the tests say so and skip, except in CI, where they fail.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "bounces";

pub struct Dovecot {
    pub port: u16,
    /// The implicit-TLS (IMAPS) port, when started with a certificate.
    pub tls_port: Option<u16>,
    child: Child,
    _dir: tempfile::TempDir,
}

const BINARY: &str = "/usr/sbin/dovecot";

impl Dovecot {
    /// Starts Dovecot with one user, `bounces`, whose password is `password`. `None` (after
    /// a notice) when Dovecot is not installed outside CI.
    pub fn start(password: &str) -> Option<Dovecot> {
        Self::start_with(password, None)
    }

    /// Like [`Dovecot::start`], with IMAPS on a second port serving `cert` and `key` (PEM).
    pub fn start_with_tls(password: &str, cert: &Path, key: &Path) -> Option<Dovecot> {
        Self::start_with(password, Some((cert, key)))
    }

    fn start_with(password: &str, tls: Option<(&Path, &Path)>) -> Option<Dovecot> {
        if !crate::checkers::available(crate::checkers::Checker::Dovecot, module_path!()) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("run")).unwrap();
        std::fs::create_dir_all(d.join("mail")).unwrap();
        // Dovecot drops privileges for its own processes and refuses uid 0 for mail: as
        // root, everything runs as nobody, who must be able to reach the mail folder.
        let (user, group) = if is_root() {
            ("nobody".to_string(), "nogroup".to_string())
        } else {
            (id("-un"), id("-gn"))
        };
        for p in [d, &d.join("mail")] {
            set_mode(p, 0o777);
        }
        std::fs::write(
            d.join("passwd"),
            format!("{USER}:{{PLAIN}}{password}::::::\n"),
        )
        .unwrap();
        let port = crate::smtp::closed_port();
        let tls_port = tls.map(|_| crate::smtp::closed_port());
        // The plain listener stays for the test's own mailbox access.
        let (ssl, imaps) = match (tls, tls_port) {
            (Some((cert, key)), Some(tls_port)) => {
                for (from, to) in [(cert, "cert.pem"), (key, "key.pem")] {
                    std::fs::copy(from, d.join(to)).unwrap();
                    set_mode(&d.join(to), 0o644);
                }
                (
                    format!(
                        "ssl = yes\nssl_cert = <{0}/cert.pem\nssl_key = <{0}/key.pem",
                        d.display()
                    ),
                    format!("address = 127.0.0.1\n    port = {tls_port}\n    ssl = yes"),
                )
            }
            _ => ("ssl = no".to_string(), "port = 0".to_string()),
        };
        let root = d.display();
        std::fs::write(
            d.join("dovecot.conf"),
            format!(
                "base_dir = {root}/run
state_dir = {root}/run/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd
}}
userdb {{
  driver = static
  args = uid={user} gid={group} home={root}/mail/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    {imaps}
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"
            ),
        )
        .unwrap();
        let child = Command::new(BINARY)
            .arg("-F")
            .arg("-c")
            .arg(d.join("dovecot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let dovecot = Dovecot {
            port,
            tls_port,
            child,
            _dir: dir,
        };
        let started = Instant::now();
        for port in std::iter::once(port).chain(tls_port) {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "dovecot did not listen on {port}; see its log"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(dovecot)
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    id("-u") == "0"
}

fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A small synchronous IMAP client for the tests, on async-imap.
pub struct Mailbox {
    port: u16,
    password: String,
}

impl Mailbox {
    pub fn new(dovecot: &Dovecot, password: &str) -> Self {
        Mailbox {
            port: dovecot.port,
            password: password.to_string(),
        }
    }

    fn with_session<T>(
        &self,
        f: impl AsyncFnOnce(&mut async_imap::Session<tokio::net::TcpStream>) -> T,
    ) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .unwrap();
            let mut client = async_imap::Client::new(tcp);
            client.read_response().await.unwrap().unwrap();
            let mut session = client
                .login(USER, &self.password)
                .await
                .map_err(|e| e.0)
                .unwrap();
            let result = f(&mut session).await;
            session.logout().await.unwrap();
            result
        })
    }

    pub fn append(&self, folder: &str, message: &[u8]) {
        let message = message.to_vec();
        let folder = folder.to_string();
        self.with_session(async move |s| {
            let _ = s.create(&folder).await;
            s.append(&folder, None, None, &message).await.unwrap();
        })
    }

    /// Messages in `folder` (0 when it does not exist).
    pub fn count(&self, folder: &str) -> u32 {
        let folder = folder.to_string();
        self.with_session(async move |s| match s.select(&folder).await {
            Ok(m) => m.exists,
            Err(_) => 0,
        })
    }
}
