//! What the riklet tells systemd (`Type=notify`): `STATUS=` at each phase
//! of its start (recovering pods, registering, running N pods), `READY=1`
//! once it has recovered its pods and registered with the scheduler (the
//! embedded one with `--standalone`, which then serves too), and
//! `WATCHDOG=1` from the agent loop itself, so that a wedged agent loop
//! misses its pings and systemd restarts the riklet.
//!
//! Without `NOTIFY_SOCKET` nothing is sent; without `WATCHDOG_USEC` there is
//! no watchdog. The messages themselves are [`scheduler::service`]'s.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use scheduler::service::{Notifier, TestFault};
use tokio::sync::broadcast;
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{error, info};

use crate::agent::AgentHandle;

/// How often the status line is refreshed after `READY=1` (when the pods
/// or the scheduler link changed).
const STATUS_REFRESH: Duration = Duration::from_secs(1);
/// How often the registration is checked before `READY=1`.
const REGISTRATION_POLL: Duration = Duration::from_millis(100);

/// The riklet's link with its service manager.
#[derive(Debug, Clone, Default)]
pub struct ServiceManager {
    pub notifier: Notifier,
    /// Half of `WATCHDOG_USEC`: how often the agent loop pings.
    pub watchdog: Option<Duration>,
    /// A fault a test injects into a debug build (`RIKLET_TEST_FAULT`).
    pub fault: Option<TestFault>,
}

impl ServiceManager {
    /// The watchdog the agent loop pings, if systemd asked for one.
    pub(crate) fn agent_watchdog(&self) -> Option<AgentWatchdog> {
        let period = self.watchdog?;
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        info!(period = ?period, "the agent loop pings the systemd watchdog");
        Some(AgentWatchdog {
            notifier: self.notifier.clone(),
            ticker,
            wedge: match &self.fault {
                Some(TestFault::WedgeAgent(file)) => Some(file.clone()),
                _ => None,
            },
        })
    }
}

/// The watchdog pings of the agent loop.
#[derive(Debug)]
pub(crate) struct AgentWatchdog {
    notifier: Notifier,
    ticker: Interval,
    /// [`TestFault::WedgeAgent`]: stop for good once this file exists.
    wedge: Option<PathBuf>,
}

impl AgentWatchdog {
    /// Resolves when the next ping is due; never without a watchdog.
    pub(crate) async fn due(watchdog: &mut Option<AgentWatchdog>) {
        match watchdog {
            Some(w) => {
                w.ticker.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Pings, from the agent loop's own turn (not from inside a select
    /// branch, which other branches would outrun).
    pub(crate) async fn ping(&mut self) {
        if self.wedge.as_ref().is_some_and(|f| f.exists()) {
            error!("test fault: the agent loop wedges");
            std::future::pending::<()>().await;
        }
        self.notifier.watchdog();
    }
}

/// Reports the riklet's start to systemd, then keeps its status line
/// current, until the stop.
pub(crate) async fn report(
    notifier: Notifier,
    agent: AgentHandle,
    connected: Arc<AtomicBool>,
    scheduler: String,
    mut stop: broadcast::Receiver<()>,
) {
    if !notifier.is_active() {
        return;
    }
    tokio::select! {
        () = follow(&notifier, &agent, &connected, &scheduler) => {}
        _ = stop.recv() => notifier.stopping(),
    }
}

async fn follow(notifier: &Notifier, agent: &AgentHandle, connected: &AtomicBool, scheduler: &str) {
    let mut endpoints = agent.endpoints();
    // Set once the runtime memory's pods are recovered.
    let _ = endpoints.wait_for(Option::is_some).await;
    notifier.status(&format!("registering with the scheduler at {scheduler}"));
    while !connected.load(Ordering::Relaxed) {
        tokio::time::sleep(REGISTRATION_POLL).await;
    }
    let generation = agent.pods_generation();
    let mut shown = None;
    loop {
        let now = (generation.current(), connected.load(Ordering::Relaxed));
        if shown != Some(now) {
            let line = status_line(agent.pods().await.len(), now.1);
            match shown {
                None => {
                    notifier.ready(&line);
                    info!(status = %line, "ready (told systemd)");
                }
                Some(_) => notifier.status(&line),
            }
            shown = Some(now);
        }
        tokio::time::sleep(STATUS_REFRESH).await;
    }
}

/// The status line after `READY=1`.
fn status_line(pods: usize, connected: bool) -> String {
    let pods = match pods {
        1 => "running 1 pod".to_string(),
        n => format!("running {n} pods"),
    };
    if connected {
        pods
    } else {
        format!("{pods}; reconnecting to the scheduler")
    }
}

#[cfg(test)]
mod tests {
    use super::status_line;

    #[test]
    fn status_line_counts_pods_and_says_when_the_scheduler_is_gone() {
        assert_eq!(status_line(0, true), "running 0 pods");
        assert_eq!(status_line(1, true), "running 1 pod");
        assert_eq!(
            status_line(3, false),
            "running 3 pods; reconnecting to the scheduler"
        );
    }
}
