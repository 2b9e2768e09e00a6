//! A pass of the run: handing due deliveries to the workers, held bounces, draining, and what ends a pass.

use super::*;

impl<T: Transport> Run<T> {
    /// Hands every due delivery to the workers, in subscriber order from the cursor; a
    /// delivery whose domain is at its cap waits for its turn while the others go on.
    pub(super) async fn pass(&mut self) -> Result<Pass, Halt> {
        self.held.clear();
        loop {
            if self.engine.tripped().is_some() {
                return Ok(Pass::Tripped);
            }
            if let Some(pass) = self.release_held().await? {
                return Ok(pass);
            }
            let waiting: usize = self.held.iter().map(VecDeque::len).sum();
            let batch = if waiting >= HELD_MAX {
                Vec::new()
            } else {
                ledger::due_deliveries(&self.read, self.issue, self.cursor, now_ms(), BATCH)
                    .map_err(|e| Halt::Fault(format!("reading the due deliveries failed: {e}")))?
            };
            if batch.is_empty() {
                if waiting == 0 {
                    return Ok(Pass::Done);
                }
                self.engine.progress.waiting_for(format!(
                    "{waiting} deliveries to capped recipient domains (domains:) to have their turn"
                ));
                self.wait(tokio::time::sleep(DomainGate::NAP)).await?;
                continue;
            }
            self.engine.progress.waiting_for(format!(
                "a free connection: all {} exchanges with {} are in flight",
                self.concurrency,
                self.engine.transport.describe()
            ));
            for d in batch {
                self.cursor = d.subscriber_id;
                if !d.active {
                    self.record(d.subscriber_id, Outcome::Skipped)?;
                    continue;
                }
                let email = match d.email {
                    Ok(a) => a,
                    Err(reason) => {
                        let outcome = Outcome::Permanent {
                            reply: reason,
                            bounce: false,
                        };
                        self.record(d.subscriber_id, outcome)?;
                        continue;
                    }
                };
                let group = self.gate.group(email.address().domain());
                let recipient = Recipient {
                    subscriber_id: d.subscriber_id,
                    email,
                    name: d.name,
                };
                match self.gate.try_pass(group) {
                    domains::Pass::Go(slot) => {
                        if let Some(pass) = self.hand_out(recipient, d.attempts, slot).await? {
                            return Ok(pass);
                        }
                    }
                    domains::Pass::Wait => {
                        let g = group.expect("only a capped domain waits");
                        if self.held.len() <= g {
                            self.held.resize_with(g + 1, VecDeque::new);
                        }
                        self.held[g].push_back(Held {
                            recipient,
                            attempts: d.attempts,
                        });
                    }
                }
                if let Some(pass) = self.release_held().await? {
                    return Ok(pass);
                }
            }
        }
    }

    /// Hands out the waiting deliveries whose domain has room now.
    pub(super) async fn release_held(&mut self) -> Result<Option<Pass>, Halt> {
        for g in 0..self.held.len() {
            while !self.held[g].is_empty() {
                let domains::Pass::Go(slot) = self.gate.try_pass(Some(g)) else {
                    break;
                };
                let held = self.held[g].pop_front().expect("not empty");
                if let Some(pass) = self.hand_out(held.recipient, held.attempts, slot).await? {
                    return Ok(Some(pass));
                }
            }
        }
        Ok(None)
    }

    /// Hands one delivery to a worker once a connection is free and the active relay's
    /// limits allow it; a per-second limit is waited out, a longer one ends the pass.
    pub(super) async fn hand_out(
        &mut self,
        recipient: Recipient,
        attempts: u32,
        domain: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<Option<Pass>, Halt> {
        let permits = self.permits.clone();
        let permit = self
            .wait(permits.acquire_owned())
            .await?
            .expect("the semaphore is never closed");
        if self.engine.tripped().is_some() {
            return Ok(Some(Pass::Tripped));
        }
        loop {
            let now = now_ms();
            let relay = &mut self.relays[self.active];
            match relay.limits.check(now) {
                Ok(()) => {
                    relay.limits.take(now);
                    break;
                }
                Err(at) if at.limit.is_short() => {
                    self.engine.progress.waiting_for(format!(
                        "the {} of relay {}",
                        at.limit.label(),
                        relay.name
                    ));
                    self.wait(tokio::time::sleep(limits::wait_for(&at, now)))
                        .await?;
                }
                Err(at) => return Ok(Some(Pass::AtLimit(at.describe(&relay.name)))),
            }
        }
        let job = Job {
            recipient,
            attempts_before: attempts,
            _permit: permit,
            _domain: domain,
        };
        let jobs = self.jobs.clone();
        if self.wait(jobs.send(job)).await?.is_err() {
            return Err(Halt::Fault("every delivery worker stopped".into()));
        }
        self.engine.progress.beat();
        Ok(None)
    }

    /// Lets in-flight messages finish and their outcomes land in the ledger.
    pub(super) async fn drain(&mut self) -> Result<(), Halt> {
        self.engine.progress.waiting_for(format!(
            "the last messages in flight with {} to finish",
            self.engine.transport.describe()
        ));
        let permits = self.permits.clone();
        let all = self.concurrency as u32;
        drop(
            unless_failed(&self.engine.fault, permits.acquire_many_owned(all))
                .await?
                .expect("the semaphore is never closed"),
        );
        self.engine
            .progress
            .waiting_for("the ledger writer to commit the last outcomes");
        let (ack, acked) = oneshot::channel();
        self.engine
            .writer
            .send(WriteOp::Flush { ack })
            .map_err(|_| self.writer_gone())?;
        if unless_failed(&self.engine.fault, acked).await?.is_err() {
            return Err(self.writer_gone());
        }
        Ok(())
    }

    /// The end of a pass: the breaker's check, then done, or a wait for the next retry.
    pub(super) async fn end_of_pass(&mut self) -> Result<PassEnd, Halt> {
        self.drain().await?;
        let relay = self.engine.transport.describe();
        let tripped = {
            let mut breaker = self.engine.breaker.lock().expect("breaker lock");
            breaker
                .end_pass(|| format!("{relay} could not be reached"))
                .map(str::to_owned)
        };
        if let Some(reason) = tripped {
            return Ok(PassEnd::Tripped(reason));
        }
        let next = ledger::next_due_ms(&self.read, self.issue)
            .map_err(|e| Halt::Fault(format!("reading the next retry time failed: {e}")))?;
        let Some(due) = next else {
            return Ok(PassEnd::Finished(Finish::Complete));
        };
        self.cursor = SubscriberId(0);
        let wait = Duration::from_millis((due - now_ms()).max(0) as u64);
        if !wait.is_zero() {
            debug!(?wait, "waiting for retries to come due");
            self.engine.progress.waiting_for(format!(
                "temporary failures to come due for their retry (the next in {})",
                humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
            ));
            self.wait(tokio::time::sleep(wait.min(Duration::from_secs(60))))
                .await?;
        }
        Ok(PassEnd::Again)
    }

    /// Stops handing out work, lets what is in flight finish (each exchange is
    /// time-limited), and joins the workers and the writer. Returns the engine's counters
    /// and refunds, and the writer's failure if it had one.
    pub(in crate::delivery) async fn shutdown(self) -> Stopped {
        let Run {
            engine,
            jobs,
            workers,
            reporters,
            writer,
            read,
            ..
        } = self;
        engine.stop.store(true, Ordering::SeqCst);
        drop(jobs);
        for w in workers {
            let _ = w.await;
        }
        for r in reporters {
            r.abort();
            let _ = r.await;
        }
        let refunds = engine.breaker.lock().expect("breaker lock").take_refunds();
        let engine = match Arc::try_unwrap(engine) {
            Ok(e) => e,
            Err(_) => unreachable!("every worker and reporter was joined"),
        };
        let Engine {
            writer: writer_tx,
            bar,
            sent,
            retried,
            fault,
            ..
        } = engine;
        drop(writer_tx);
        let writer = match writer.join() {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!("the ledger writer panicked")),
        };
        bar.finish_and_clear();
        Stopped {
            read,
            refunds,
            writer,
            fault: fault.get(),
            sent: sent.into_inner(),
            retried: retried.into_inner(),
        }
    }
}
