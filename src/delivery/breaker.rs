//! The circuit breaker: tells an unreachable server from a recipient's problem.

/// Consecutive connection faults with no successful conversation in between. Enough of
/// them in a row means the server, not a recipient, is the problem.
#[derive(Default)]
pub(super) struct Breaker {
    pub(super) streak: Vec<crate::store::SubscriberId>,
    pub(super) tripped: Option<String>,
    /// Server replies (of any kind) and connection faults in the current pass.
    pub(super) pass_replies: u64,
    pub(super) pass_faults: u64,
    /// What the last fault said, to tell the operator why the issue paused.
    pub(super) last_fault: Option<String>,
}

impl Breaker {
    /// Any reply proves the server is there: the fault streak starts over (unless the
    /// breaker already tripped, whose streak is the list of attempts to give back).
    pub(super) fn reply(&mut self) {
        self.pass_replies += 1;
        if self.tripped.is_none() {
            self.streak.clear();
        }
    }
}
