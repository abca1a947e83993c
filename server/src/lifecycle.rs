//! The process's lifecycle as its control threads see it (the signal thread, the handoff thread,
//! the admin API), and the one place that decides when the shards drain, and how.
//!
//! ```text
//!   Running ──SIGUSR2──▶ Upgrading ──successor READY──▶ Draining, as after a hot restart
//!     │                    └──successor failed──▶ Running (or Draining, if a drain was asked)
//!     └──SIGTERM, SIGINT, POST /drain──▶ Draining, plain
//! ```
//!
//! A drain asked for while a hot restart is under way (a successor was started and may still
//! connect, for [`SUCCESSOR_CONNECT_WINDOW`], or one is taking the sockets over) waits for its
//! outcome instead of racing it: if the successor takes over, this process drains as after any
//! hot restart (it stops accepting at once and leaves the sockets to the successor); if it fails
//! or never connects, this process drains as asked. Either way exactly one process serves
//! afterwards, and a drain never starts while the sockets are being handed over. (Drained
//! plainly, this process would accept for `drain_accept` and then stop listening, in a socket
//! the successor shares.)
//!
//! Only the transitions are locked here; nothing on a shard or a request path touches this.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crate::serve::SUCCESSOR_CONNECT_WINDOW;

/// Where the process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Serving, no hot restart under way.
    Running,
    /// A successor was started at `since` (SIGUSR2), or `connected` and is taking the sockets
    /// over; `drain_asked`: a drain was asked for meanwhile and waits for the outcome.
    Upgrading {
        since: Instant,
        connected: bool,
        drain_asked: bool,
    },
    /// The shards were told to drain.
    Draining,
}

/// What became of a request to drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainRequest {
    /// The shards drain from now on.
    Started,
    /// A hot restart is under way: the drain follows its outcome.
    Deferred,
    /// A drain had already started or been asked for.
    AlreadyAsked,
}

/// Starts the shards' drain: `true` for a drain after a hot restart (stop accepting at once),
/// `false` for a plain one.
type StartDrain = Box<dyn Fn(bool) + Send + Sync>;

/// The lifecycle shared by the control threads.
pub struct Lifecycle {
    phase: Mutex<Phase>,
    start_drain: StartDrain,
    drain_timeout: Duration,
}

impl Lifecycle {
    /// A running process; `start_drain(handoff)` tells the shards to drain: `true` for a drain
    /// after a hot restart (stop accepting at once), `false` for a plain one.
    pub fn new(
        drain_timeout: Duration,
        start_drain: impl Fn(bool) + Send + Sync + 'static,
    ) -> Arc<Lifecycle> {
        Arc::new(Lifecycle {
            phase: Mutex::new(Phase::Running),
            start_drain: Box::new(start_drain),
            drain_timeout,
        })
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a drain has started or been asked for.
    pub fn draining(&self) -> bool {
        matches!(
            *self.phase(),
            Phase::Draining
                | Phase::Upgrading {
                    drain_asked: true,
                    ..
                }
        )
    }

    /// SIGTERM, SIGINT or `POST /drain`: drains now, or after a hot restart under way. `cause`
    /// completes the log line (`""`, `" on admin request"`).
    pub fn drain(self: &Arc<Self>, cause: &str) -> DrainRequest {
        let mut phase = self.phase();
        match *phase {
            Phase::Running => {}
            Phase::Draining
            | Phase::Upgrading {
                drain_asked: true, ..
            } => return DrainRequest::AlreadyAsked,
            Phase::Upgrading {
                since,
                connected: false,
                ..
            } if since.elapsed() >= SUCCESSOR_CONNECT_WINDOW => {}
            Phase::Upgrading {
                since, connected, ..
            } => {
                // A successor that never connects (it failed to start) ends the wait when its
                // window does; without a thread to see to that, drain now.
                let waits = connected || {
                    let me = self.clone();
                    let wait = (since + SUCCESSOR_CONNECT_WINDOW)
                        .saturating_duration_since(Instant::now());
                    std::thread::Builder::new()
                        .name("percore-upgrade-wait".into())
                        .spawn(move || {
                            std::thread::sleep(wait);
                            me.connect_window_over(since);
                        })
                        .is_ok()
                };
                if waits {
                    *phase = Phase::Upgrading {
                        since,
                        connected,
                        drain_asked: true,
                    };
                    eprintln!(
                        "percore: hot restart under way: draining{cause} once the successor has \
                         taken over, or failed"
                    );
                    return DrainRequest::Deferred;
                }
            }
        }
        *phase = Phase::Draining;
        eprintln!(
            "percore: draining{cause} (deadline {:?})",
            self.drain_timeout
        );
        (self.start_drain)(false);
        DrainRequest::Started
    }

    /// SIGUSR2: whether to start a successor; `Err` says why not.
    pub fn begin_upgrade(&self) -> Result<(), &'static str> {
        let mut phase = self.phase();
        match *phase {
            Phase::Draining
            | Phase::Upgrading {
                drain_asked: true, ..
            } => Err("draining; upgrade ignored"),
            Phase::Upgrading {
                since,
                connected: false,
                ..
            } if since.elapsed() < SUCCESSOR_CONNECT_WINDOW => {
                Err("a successor is already starting; SIGUSR2 ignored")
            }
            Phase::Upgrading {
                connected: true, ..
            } => Err("a successor is already starting; SIGUSR2 ignored"),
            // Running, or a successor that never connected (one that failed early, on a bad
            // config): start one.
            Phase::Running | Phase::Upgrading { .. } => {
                *phase = Phase::Upgrading {
                    since: Instant::now(),
                    connected: false,
                    drain_asked: false,
                };
                Ok(())
            }
        }
    }

    /// A successor connected to the control socket: whether to hand it the sockets (not once a
    /// drain has started).
    pub fn successor_connected(&self) -> bool {
        let mut phase = self.phase();
        match *phase {
            Phase::Draining => false,
            Phase::Running => {
                *phase = Phase::Upgrading {
                    since: Instant::now(),
                    connected: true,
                    drain_asked: false,
                };
                true
            }
            Phase::Upgrading {
                since, drain_asked, ..
            } => {
                *phase = Phase::Upgrading {
                    since,
                    connected: true,
                    drain_asked,
                };
                true
            }
        }
    }

    /// The successor `pid` said READY: it serves; this process drains as after a hot restart.
    pub fn successor_ready(&self, pid: u32) {
        let mut phase = self.phase();
        if *phase == Phase::Draining {
            return;
        }
        *phase = Phase::Draining;
        eprintln!(
            "percore: pid {pid} took over; draining (deadline {:?})",
            self.drain_timeout
        );
        (self.start_drain)(true);
    }

    /// The successor failed (`why`, logged here): this process serves on, or drains if a drain
    /// was asked for meanwhile.
    pub fn successor_failed(&self, why: &str) {
        let mut phase = self.phase();
        match *phase {
            Phase::Upgrading {
                drain_asked: true, ..
            } => {
                *phase = Phase::Draining;
                eprintln!(
                    "percore: {why}; draining as asked (deadline {:?})",
                    self.drain_timeout
                );
                (self.start_drain)(false);
            }
            Phase::Upgrading { .. } => {
                *phase = Phase::Running;
                eprintln!("percore: {why}; still serving");
            }
            Phase::Running | Phase::Draining => eprintln!("percore: {why}"),
        }
    }

    /// The successor started at `since` had [`SUCCESSOR_CONNECT_WINDOW`] to connect: if it has
    /// not, a drain that waits for it starts.
    fn connect_window_over(&self, since: Instant) {
        let mut phase = self.phase();
        if *phase
            == (Phase::Upgrading {
                since,
                connected: false,
                drain_asked: true,
            })
        {
            *phase = Phase::Draining;
            eprintln!(
                "percore: no successor connected within {SUCCESSOR_CONNECT_WINDOW:?}; draining as \
                 asked (deadline {:?})",
                self.drain_timeout
            );
            (self.start_drain)(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lifecycle that records the drains it starts (`true`: after a hot restart).
    fn lifecycle() -> (Arc<Lifecycle>, Arc<Mutex<Vec<bool>>>) {
        let drains = Arc::new(Mutex::new(Vec::new()));
        let d = drains.clone();
        let lc = Lifecycle::new(Duration::from_secs(30), move |handoff| {
            d.lock().unwrap().push(handoff)
        });
        (lc, drains)
    }

    fn drains(d: &Mutex<Vec<bool>>) -> Vec<bool> {
        d.lock().unwrap().clone()
    }

    #[test]
    fn a_drain_while_serving_starts_at_once_and_only_once() {
        let (lc, d) = lifecycle();
        assert!(!lc.draining());
        assert_eq!(lc.drain(""), DrainRequest::Started);
        assert_eq!(lc.drain(""), DrainRequest::AlreadyAsked);
        assert!(lc.draining());
        assert_eq!(drains(&d), [false]);
        assert!(lc.begin_upgrade().is_err(), "no hot restart while draining");
        assert!(!lc.successor_connected(), "a successor is refused");
    }

    #[test]
    fn a_drain_during_a_handoff_waits_and_follows_a_successful_one() {
        for connected_first in [false, true] {
            let (lc, d) = lifecycle();
            lc.begin_upgrade().unwrap();
            if connected_first {
                assert!(lc.successor_connected());
            }
            // SIGTERM before the successor connected, or while it takes the sockets over.
            assert_eq!(lc.drain(""), DrainRequest::Deferred);
            assert!(lc.draining());
            assert_eq!(lc.drain(""), DrainRequest::AlreadyAsked);
            assert!(
                lc.successor_connected(),
                "the successor still gets the sockets"
            );
            assert!(drains(&d).is_empty(), "nothing drains during the handoff");
            lc.successor_ready(42);
            assert_eq!(drains(&d), [true], "one drain, as after a hot restart");
            assert_eq!(lc.drain(""), DrainRequest::AlreadyAsked);
            assert_eq!(drains(&d), [true]);
        }
    }

    #[test]
    fn a_drain_during_a_handoff_that_fails_drains_plainly() {
        let (lc, d) = lifecycle();
        lc.begin_upgrade().unwrap();
        assert!(lc.successor_connected());
        assert_eq!(lc.drain(""), DrainRequest::Deferred);
        lc.successor_failed("successor pid 42 failed before ready");
        assert_eq!(drains(&d), [false]);
        assert!(!lc.successor_connected());
    }

    #[test]
    fn a_failed_handoff_without_a_drain_leaves_the_process_serving() {
        let (lc, d) = lifecycle();
        lc.begin_upgrade().unwrap();
        assert_eq!(
            lc.begin_upgrade(),
            Err("a successor is already starting; SIGUSR2 ignored")
        );
        assert!(lc.successor_connected());
        lc.successor_failed("successor pid 42 failed before ready");
        assert!(drains(&d).is_empty());
        assert!(!lc.draining());
        lc.begin_upgrade().expect("another hot restart may start");
    }

    #[test]
    fn a_successor_that_never_connects_ends_the_wait_of_a_drain() {
        let (lc, d) = lifecycle();
        lc.begin_upgrade().unwrap();
        assert_eq!(lc.drain(""), DrainRequest::Deferred);
        let Phase::Upgrading { since, .. } = *lc.phase() else {
            panic!("upgrading")
        };
        lc.connect_window_over(since);
        assert_eq!(drains(&d), [false]);
        // The waiting thread's own call later changes nothing.
        lc.connect_window_over(since);
        assert_eq!(drains(&d), [false]);
    }
}
