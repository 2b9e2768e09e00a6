//! A real SMTP server on 127.0.0.1 for integration tests (include with `mod smtp;`).
//!
//! [`TestSmtp`] speaks SMTP over TCP on a random (or chosen) port, records every message it
//! accepts, and can be told to misbehave per recipient (temporary failures, unknown users,
//! rejection at end of DATA, slow answers) or as a whole (a throttling policy on every RCPT
//! that the test lifts). [`SilentServer`] accepts connections and never
//! answers; [`closed_port`] gives a port where nothing listens.
//!
//! Why not `mailin-embedded`: its `Server::serve()` runs an accept loop that never returns
//! and cannot be stopped (no shutdown handle; the listener is moved into it), so a port
//! could never be freed for `start_on`; mailin's `Session` type (which would allow our own
//! accept loop) is not re-exported by mailin-embedded; and mailin rejects `MAIL FROM:<>`
//! and any MAIL parameter other than `BODY=` (e.g. `SIZE=`, `SMTPUTF8`) with a syntax
//! error. So this is a small, self-contained server over `std::net`, one thread per
//! connection (no concurrency limit), with the same data semantics as mailin: the message
//! is dot-unstuffed, every line keeps its CRLF, and the terminating `.\r\n` is not included.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a session may sit idle (no complete line from the client) before it is closed.
const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest line / message accepted, to keep a broken client from eating memory.
const MAX_LINE: usize = 1024 * 1024;
const MAX_MESSAGE: usize = 32 * 1024 * 1024;

/// One message accepted by the server (its DATA was answered 250).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The reverse path without angle brackets (`""` for the null sender `<>`).
    pub mail_from: String,
    /// The recipients accepted at RCPT for this message, without angle brackets, as sent.
    pub rcpt: Vec<String>,
    /// The message exactly as transferred after DATA, dot-unstuffed, every line ending in
    /// CRLF, without the terminating `.\r\n`.
    pub raw: Vec<u8>,
    /// The client asked for SMTPUTF8 on its MAIL command (RFC 6531).
    pub smtputf8: bool,
    /// The session (connection) it came over, numbered from 0 in the order accepted.
    pub session: u64,
    /// When its MAIL command was accepted, and when its DATA was.
    pub started: Instant,
    pub accepted: Instant,
}

impl Received {
    /// The raw message as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// Per-recipient misbehaviour of a [`TestSmtp`]. Addresses are matched case-insensitively
/// (keys are lowercased when the server starts).
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Recipients answered `451 4.3.0 <addr>: Temporary failure, try again later` at RCPT
    /// for their first `n` attempts (counted across connections), then accepted.
    pub temp_fail_first: HashMap<String, usize>,
    /// Recipients answered `550 5.1.1 <addr>: Recipient address rejected: User unknown`
    /// at RCPT, always.
    pub user_unknown: HashSet<String>,
    /// Recipients whose message is answered `554 5.7.1 Message rejected as spam` at the end
    /// of DATA (a permanent failure that is not user-unknown). Their RCPT is accepted.
    pub reject_data: HashSet<String>,
    /// Delay before answering the end of DATA (whatever the answer).
    pub data_delay: Duration,
    /// Answer every MAIL FROM with `553 5.7.1 Sender address rejected: not owned by user`
    /// (a relay that will not send for our From address).
    pub reject_sender: bool,
    /// Leave SMTPUTF8 out of the EHLO reply and refuse its MAIL parameter, as a server
    /// without RFC 6531 support does.
    pub no_smtputf8: bool,
    /// Leave PIPELINING (RFC 2920) out of the EHLO reply: the client then waits for each
    /// reply before its next command.
    pub no_pipelining: bool,
    /// A policy on the whole relay: every RCPT is answered with this reply (e.g. Gmail's
    /// `421 4.7.28` or SES's `454 Throttling failure`) until [`TestSmtp::lift`] is called.
    pub every_rcpt: Option<String>,
    /// Recipients answered at RCPT with the given reply (e.g. `452 4.2.2 Mailbox full`) for
    /// their first `n` attempts (counted across connections), then accepted.
    pub rcpt_reply_first: HashMap<String, (usize, String)>,
    /// The answer to an accepted message instead of `250 2.0.0 Ok: queued as T…`, with
    /// `{n}` standing for the message's number in six digits (a hosted relay's reply that
    /// carries its own message id, such as SES's `250 Ok <id>`).
    pub accepted_reply: Option<String>,
}

impl Behaviour {
    /// Fail RCPT for `addr` with 451 for its first `n` attempts.
    pub fn temp_fail(mut self, addr: &str, n: usize) -> Self {
        self.temp_fail_first.insert(addr.to_lowercase(), n);
        self
    }

    /// Answer RCPT for `addr` with 550 5.1.1 User unknown.
    pub fn unknown(mut self, addr: &str) -> Self {
        self.user_unknown.insert(addr.to_lowercase());
        self
    }

    /// Answer the end of DATA of messages to `addr` with 554 5.7.1.
    pub fn reject(mut self, addr: &str) -> Self {
        self.reject_data.insert(addr.to_lowercase());
        self
    }

    /// Refuse every sender at MAIL FROM.
    pub fn refuse_sender(mut self) -> Self {
        self.reject_sender = true;
        self
    }

    /// Do not offer SMTPUTF8.
    pub fn without_smtputf8(mut self) -> Self {
        self.no_smtputf8 = true;
        self
    }

    /// Do not offer PIPELINING.
    pub fn without_pipelining(mut self) -> Self {
        self.no_pipelining = true;
        self
    }

    /// Answer every RCPT with `reply` until the policy is lifted.
    pub fn every_rcpt(mut self, reply: &str) -> Self {
        self.every_rcpt = Some(reply.to_owned());
        self
    }

    /// Answer RCPT for `addr` with `reply` for its first `n` attempts.
    pub fn rcpt_reply(mut self, addr: &str, n: usize, reply: &str) -> Self {
        self.rcpt_reply_first
            .insert(addr.to_lowercase(), (n, reply.to_owned()));
        self
    }

    /// Answer each accepted message with `reply` (`{n}`: its number, six digits).
    pub fn accepted_reply(mut self, reply: &str) -> Self {
        self.accepted_reply = Some(reply.to_owned());
        self
    }

    /// Wait `delay` before answering the end of DATA.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.data_delay = delay;
        self
    }

    fn normalised(self) -> Self {
        Behaviour {
            temp_fail_first: self
                .temp_fail_first
                .into_iter()
                .map(|(k, v)| (k.to_lowercase(), v))
                .collect(),
            user_unknown: self.user_unknown.iter().map(|a| a.to_lowercase()).collect(),
            reject_data: self.reject_data.iter().map(|a| a.to_lowercase()).collect(),
            data_delay: self.data_delay,
            reject_sender: self.reject_sender,
            no_smtputf8: self.no_smtputf8,
            no_pipelining: self.no_pipelining,
            every_rcpt: self.every_rcpt,
            rcpt_reply_first: self
                .rcpt_reply_first
                .into_iter()
                .map(|(k, v)| (k.to_lowercase(), v))
                .collect(),
            accepted_reply: self.accepted_reply,
        }
    }
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    /// RCPT commands seen per lowercased recipient, whatever the answer.
    rcpt_attempts: HashMap<String, usize>,
    /// Sockets of live sessions, so that stopping the server can cut them.
    live: HashMap<u64, TcpStream>,
    next_session: u64,
    connections: usize,
    concurrent: usize,
    max_concurrent: usize,
}

struct Shared {
    behaviour: Behaviour,
    stopped: AtomicBool,
    /// Set by [`TestSmtp::lift`]: the `every_rcpt` policy no longer applies.
    lifted: AtomicBool,
    inner: Mutex<Inner>,
    /// Notified whenever a message is recorded.
    changed: Condvar,
    /// Set by [`TestSmtp::impose`]: every RCPT from now on gets this reply.
    imposed: Mutex<Option<String>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking session thread must not poison the test's view of the state.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A real SMTP server on 127.0.0.1, running on its own threads until stopped or dropped.
pub struct TestSmtp {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl TestSmtp {
    /// Start a server accepting everything, on a random port.
    pub fn start() -> TestSmtp {
        Self::start_with(Behaviour::default())
    }

    /// Start a server with the given behaviour, on a random port.
    pub fn start_with(behaviour: Behaviour) -> TestSmtp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        Self::serve(listener, behaviour)
    }

    /// Start a server on 127.0.0.1:`port` (e.g. the port of a stopped server). Retries the
    /// bind for up to 5 s while the port is still in use.
    pub fn start_on(port: u16, behaviour: Behaviour) -> TestSmtp {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot bind 127.0.0.1:{port}: {e}"),
            }
        };
        Self::serve(listener, behaviour)
    }

    fn serve(listener: TcpListener, behaviour: Behaviour) -> TestSmtp {
        let port = listener.local_addr().expect("local_addr").port();
        let shared = Arc::new(Shared {
            behaviour: behaviour.normalised(),
            stopped: AtomicBool::new(false),
            lifted: AtomicBool::new(false),
            inner: Mutex::new(Inner::default()),
            changed: Condvar::new(),
            imposed: Mutex::new(None),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("test-smtp-accept-{port}"))
                .spawn(move || accept_loop(listener, shared))
                .expect("spawn accept thread")
        };
        TestSmtp {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// All messages accepted so far, in the order their DATA was accepted.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// Number of accepted messages per recipient address (lowercased).
    pub fn count_by_recipient(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for msg in &self.shared.lock().received {
            for rcpt in &msg.rcpt {
                *counts.entry(rcpt.to_lowercase()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// RCPT commands seen per recipient address (lowercased), whatever they were answered.
    pub fn rcpt_attempts(&self) -> HashMap<String, usize> {
        self.shared.lock().rcpt_attempts.clone()
    }

    /// Lifts the relay-wide `every_rcpt` policy: from now on RCPT is answered normally.
    pub fn lift(&self) {
        self.shared.lifted.store(true, Ordering::SeqCst);
    }

    /// From now on, answer every RCPT with `reply` (a relay that starts throttling or
    /// refusing mid-issue); a 421 also closes the connection.
    pub fn impose(&self, reply: &str) {
        *self
            .shared
            .imposed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reply.to_owned());
    }

    /// Number of TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().connections
    }

    /// Largest number of sessions that were open at the same time.
    pub fn max_concurrent_sessions(&self) -> usize {
        self.shared.lock().max_concurrent
    }

    /// Wait until at least `n` messages were accepted or `timeout` passes; returns the count.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut inner = self.shared.lock();
        loop {
            let count = inner.received.len();
            let now = Instant::now();
            if count >= n || now >= deadline {
                return count;
            }
            inner = self
                .shared
                .changed
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stop listening: when this returns, the port refuses connections (and can be bound
    /// again), open sessions have been cut, and nothing more will be recorded.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// [`TestSmtp::stop`], keeping what was received for the test to read.
    pub fn go_down(&mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stopped.store(true, Ordering::SeqCst);
        wake_until_finished(self.port, &acceptor);
        let sessions = acceptor.join().unwrap_or_default();
        // The listener is closed now; every session is registered in `live`.
        let live: Vec<TcpStream> = self.shared.lock().live.drain().map(|(_, s)| s).collect();
        for stream in &live {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for session in sessions {
            let _ = session.join();
        }
    }
}

impl Drop for TestSmtp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Unblock an accept loop blocked in `accept()` (its stop flag already set) by connecting
/// to it, until its thread has finished.
fn wake_until_finished<T>(port: u16, acceptor: &JoinHandle<T>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while !acceptor.is_finished() {
        let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        let deadline = Instant::now() + Duration::from_millis(500);
        while !acceptor.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) -> Vec<JoinHandle<()>> {
    let mut sessions: Vec<JoinHandle<()>> = Vec::new();
    for conn in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else {
            // e.g. ECONNABORTED or EMFILE: back off a little and keep serving.
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        let id = {
            let mut inner = shared.lock();
            let id = inner.next_session;
            inner.next_session += 1;
            inner.live.insert(id, registered);
            inner.connections += 1;
            inner.concurrent += 1;
            inner.max_concurrent = inner.max_concurrent.max(inner.concurrent);
            id
        };
        let session_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("test-smtp-session-{id}"))
            .spawn(move || {
                let _ = Session::new(&session_shared, id).run(stream);
                let mut inner = session_shared.lock();
                inner.live.remove(&id);
                inner.concurrent -= 1;
            });
        match spawned {
            Ok(handle) => sessions.push(handle),
            Err(_) => {
                let mut inner = shared.lock();
                inner.live.remove(&id);
                inner.concurrent -= 1;
            }
        }
        sessions.retain(|h| !h.is_finished());
    }
    // Dropping the listener here closes the port.
    sessions
}

/// One SMTP session: the state of the current transaction.
struct Session<'a> {
    shared: &'a Shared,
    id: u64,
    started: Option<Instant>,
    greeted: bool,
    mail_from: Option<String>,
    smtputf8: bool,
    rcpt: Vec<String>,
}

enum Flow {
    Continue,
    Close,
}

impl<'a> Session<'a> {
    fn new(shared: &'a Shared, id: u64) -> Self {
        Session {
            shared,
            id,
            started: None,
            greeted: false,
            mail_from: None,
            smtputf8: false,
            rcpt: Vec::new(),
        }
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.smtputf8 = false;
        self.rcpt.clear();
    }

    fn run(mut self, stream: TcpStream) -> std::io::Result<()> {
        stream.set_read_timeout(Some(SESSION_IDLE_TIMEOUT))?;
        stream.set_write_timeout(Some(SESSION_IDLE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut out = stream;
        reply(&mut out, "220 localhost ESMTP verdicts test server")?;
        let mut line = Vec::with_capacity(256);
        loop {
            if !read_line(&mut reader, &mut line)? {
                return Ok(()); // client went away
            }
            if self.shared.stopped.load(Ordering::SeqCst) {
                return Ok(());
            }
            let text = String::from_utf8_lossy(trim_eol(&line)).into_owned();
            match self.command(&text, &mut reader, &mut out)? {
                Flow::Continue => {}
                Flow::Close => return Ok(()),
            }
        }
    }

    fn command(
        &mut self,
        line: &str,
        reader: &mut BufReader<TcpStream>,
        out: &mut TcpStream,
    ) -> std::io::Result<Flow> {
        let (verb, arg) = match line.find(' ') {
            Some(i) => (&line[..i], line[i + 1..].trim()),
            None => (line, ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" if !arg.is_empty() => {
                self.greeted = true;
                self.reset();
                let utf8 = if self.shared.behaviour.no_smtputf8 {
                    ""
                } else {
                    "250-SMTPUTF8\r\n"
                };
                let pipelining = if self.shared.behaviour.no_pipelining {
                    ""
                } else {
                    "250-PIPELINING\r\n"
                };
                reply(
                    out,
                    &format!("250-localhost\r\n{pipelining}250-8BITMIME\r\n{utf8}250-ENHANCEDSTATUSCODES\r\n250 SIZE 33554432"),
                )?;
            }
            "HELO" if !arg.is_empty() => {
                self.greeted = true;
                self.reset();
                reply(out, "250 localhost")?;
            }
            "EHLO" | "HELO" => reply(out, "501 5.5.4 Syntax: EHLO hostname")?,
            "MAIL" => self.mail(arg, out)?,
            "RCPT" => self.rcpt(arg, out)?,
            "DATA" => self.data(reader, out)?,
            "RSET" => {
                self.reset();
                reply(out, "250 2.0.0 Ok")?;
            }
            "NOOP" => reply(out, "250 2.0.0 Ok")?,
            "QUIT" => {
                reply(out, "221 2.0.0 Bye")?;
                return Ok(Flow::Close);
            }
            _ => reply(out, "502 5.5.2 Error: command not recognized")?,
        }
        Ok(Flow::Continue)
    }

    fn mail(&mut self, arg: &str, out: &mut TcpStream) -> std::io::Result<()> {
        if !self.greeted {
            return reply(out, "503 5.5.1 Error: send HELO/EHLO first");
        }
        if self.mail_from.is_some() {
            return reply(out, "503 5.5.1 Error: nested MAIL command");
        }
        if self.shared.behaviour.reject_sender {
            return reply(
                out,
                "553 5.7.1 <sender>: Sender address rejected: not owned by user",
            );
        }
        let smtputf8 = arg
            .split_whitespace()
            .skip(1)
            .any(|p| p.eq_ignore_ascii_case("SMTPUTF8"));
        if smtputf8 && self.shared.behaviour.no_smtputf8 {
            return reply(out, "555 5.5.4 Unsupported option: SMTPUTF8");
        }
        match path_arg(arg, "FROM:") {
            Some(from) if !from.is_ascii() && !smtputf8 => reply(
                out,
                &format!("553 5.6.7 <{from}>: non-ASCII sender address requires SMTPUTF8"),
            ),
            Some(from) => {
                self.started = Some(Instant::now());
                self.mail_from = Some(from);
                self.smtputf8 = smtputf8;
                reply(out, "250 2.1.0 Ok")
            }
            None => reply(out, "501 5.5.4 Syntax: MAIL FROM:<address>"),
        }
    }

    fn rcpt(&mut self, arg: &str, out: &mut TcpStream) -> std::io::Result<()> {
        if self.mail_from.is_none() {
            return reply(out, "503 5.5.1 Error: need MAIL command");
        }
        let Some(to) = path_arg(arg, "TO:").filter(|a| !a.is_empty()) else {
            return reply(out, "501 5.5.4 Syntax: RCPT TO:<address>");
        };
        if !to.is_ascii() && !self.smtputf8 {
            // What RFC 6531 servers answer a UTF-8 address outside an SMTPUTF8 transaction.
            return reply(
                out,
                &format!("553 5.6.7 <{to}>: non-ASCII recipient address requires SMTPUTF8"),
            );
        }
        let key = to.to_lowercase();
        let behaviour = &self.shared.behaviour;
        let attempt = {
            let mut inner = self.shared.lock();
            let n = inner.rcpt_attempts.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if behaviour.user_unknown.contains(&key) {
            return reply(
                out,
                &format!("550 5.1.1 <{to}>: Recipient address rejected: User unknown"),
            );
        }
        let imposed = self
            .shared
            .imposed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(policy) = imposed.as_ref().or(behaviour.every_rcpt.as_ref()) {
            if imposed.is_some() || !self.shared.lifted.load(Ordering::SeqCst) {
                reply(out, policy)?;
                if policy.starts_with("421") {
                    // 421 closes the channel (RFC 5321 3.8), as Gmail does.
                    let _ = out.shutdown(Shutdown::Both);
                }
                return Ok(());
            }
        }
        if let Some((n, text)) = behaviour.rcpt_reply_first.get(&key) {
            if attempt <= *n {
                return reply(out, text);
            }
        }
        if attempt <= behaviour.temp_fail_first.get(&key).copied().unwrap_or(0) {
            return reply(
                out,
                &format!("451 4.3.0 <{to}>: Temporary failure, try again later"),
            );
        }
        self.rcpt.push(to);
        reply(out, "250 2.1.5 Ok")
    }

    fn data(
        &mut self,
        reader: &mut BufReader<TcpStream>,
        out: &mut TcpStream,
    ) -> std::io::Result<()> {
        if self.mail_from.is_none() {
            return reply(out, "503 5.5.1 Error: need RCPT command");
        }
        if self.rcpt.is_empty() {
            return reply(out, "554 5.5.1 Error: no valid recipients");
        }
        reply(out, "354 End data with <CR><LF>.<CR><LF>")?;
        let mut raw = Vec::new();
        let mut line = Vec::with_capacity(1024);
        let mut too_big = false;
        loop {
            if !read_line(reader, &mut line)? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if trim_eol(&line) == b"." {
                break;
            }
            // Dot-unstuffing (RFC 5321 4.5.2).
            let body = if line.starts_with(b".") {
                &line[1..]
            } else {
                &line[..]
            };
            if raw.len() + body.len() > MAX_MESSAGE {
                too_big = true;
            } else {
                raw.extend_from_slice(body);
            }
        }
        let behaviour = &self.shared.behaviour;
        if !behaviour.data_delay.is_zero() {
            thread::sleep(behaviour.data_delay);
        }
        let from = self.mail_from.take().unwrap_or_default();
        let smtputf8 = std::mem::take(&mut self.smtputf8);
        let rcpt = std::mem::take(&mut self.rcpt);
        if too_big {
            return reply(out, "552 5.3.4 Message size exceeds fixed limit");
        }
        if rcpt
            .iter()
            .any(|r| behaviour.reject_data.contains(&r.to_lowercase()))
        {
            return reply(out, "554 5.7.1 Message rejected as spam");
        }
        // Recorded before answering, so a client that saw 250 finds it in `received()`; the
        // answer is written under the lock too, so `go_down` (which cuts the live sessions
        // under it) never cuts a session between the two, leaving a message on record that
        // its client never heard accepted.
        let mut inner = self.shared.lock();
        if self.shared.stopped.load(Ordering::SeqCst) {
            // Stopped while receiving: never answered 250, so not recorded.
            return Err(std::io::ErrorKind::ConnectionAborted.into());
        }
        inner.received.push(Received {
            mail_from: from,
            rcpt,
            raw,
            smtputf8,
            session: self.id,
            started: self.started.unwrap_or_else(Instant::now),
            accepted: Instant::now(),
        });
        self.shared.changed.notify_all();
        let queue_id = inner.received.len();
        match &self.shared.behaviour.accepted_reply {
            Some(answer) => reply(out, &answer.replace("{n}", &format!("{queue_id:06}"))),
            None => reply(out, &format!("250 2.0.0 Ok: queued as T{queue_id:06}")),
        }
    }
}

/// Read one line (up to and including `\n`) into `line`; false at end of stream.
fn read_line(reader: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> std::io::Result<bool> {
    line.clear();
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(!line.is_empty());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&buf[..=i]);
                reader.consume(i + 1);
                return Ok(true);
            }
            None => {
                let n = buf.len();
                line.extend_from_slice(buf);
                reader.consume(n);
                if line.len() > MAX_LINE {
                    return Err(std::io::ErrorKind::InvalidData.into());
                }
            }
        }
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parse `FROM:<addr> [params]` / `TO:<addr> [params]` (case-insensitive keyword, optional
/// space after the colon, brackets optional). Returns the address without brackets.
fn path_arg(arg: &str, keyword: &str) -> Option<String> {
    if arg.len() < keyword.len() || !arg[..keyword.len()].eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>')?;
        Some(inner[..end].to_string())
    } else {
        let addr = rest.split_whitespace().next()?;
        Some(addr.to_string())
    }
}

fn reply(out: &mut TcpStream, text: &str) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(text.len() + 2);
    buf.extend_from_slice(text.as_bytes());
    buf.extend_from_slice(b"\r\n");
    out.write_all(&buf)?;
    out.flush()
}

/// A TCP listener on 127.0.0.1 that accepts connections and never writes a byte (a stalled
/// SMTP server). Accepted sockets stay open until the server is dropped.
pub struct SilentServer {
    port: u16,
    stopped: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let stopped = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let stopped = Arc::clone(&stopped);
            let held = Arc::clone(&held);
            thread::Builder::new()
                .name(format!("silent-smtp-{port}"))
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stopped.load(Ordering::SeqCst) {
                            break;
                        }
                        match conn {
                            Ok(stream) => {
                                held.lock().unwrap_or_else(|e| e.into_inner()).push(stream)
                            }
                            Err(_) => thread::sleep(Duration::from_millis(5)),
                        }
                    }
                })
                .expect("spawn silent accept thread")
        };
        SilentServer {
            port,
            stopped,
            held,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            self.stopped.store(true, Ordering::SeqCst);
            wake_until_finished(self.port, &acceptor);
            let _ = acceptor.join();
        }
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// A port on 127.0.0.1 where nothing listens (an ephemeral port that was bound and released).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}
