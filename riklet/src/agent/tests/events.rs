//! Container state reasons and pod events, on the fake host.

use proto::status::lifecycle::{CRASH_LOOP_BACK_OFF, RUN_CONTAINER_ERROR};

use super::super::events::MAX_POD_EVENTS;
use super::*;

/// The status the agent would report for the pod now.
fn status(h: &Harness, id: &str) -> AppStatus {
    h.agent.view(h.pod(id))
}

fn reasons(status: &AppStatus) -> Vec<String> {
    status.history.iter().map(|e| e.reason.clone()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_shows_run_container_error_then_crash_loop_back_off() {
    let mut h = Harness::new();
    h.host.fail_next_start(
        "main",
        ExitRecord {
            exit_code: Some(127),
            signal: None,
            finished_at: now_ms(),
            reason: "StartError".into(),
            message: Some("cannot start /nonexistent/bin: No such file or directory".into()),
        },
    );
    h.create("app-1", ONE_PROCESS, "Always").await;
    h.step_until("started").await;
    let failed_at = tokio::time::Instant::now();
    let failed = status(&h, "app-1");
    assert_eq!(
        failed.containers[0].reason.as_deref(),
        Some(RUN_CONTAINER_ERROR)
    );
    assert_eq!(reasons(&failed), ["Created", "Failed"]);
    h.step_until("backoff-noticed").await;
    // The paused clock only moves by the agent's own timers: this is the
    // delay the agent chose, not the speed of the machine.
    let noticed_after = failed_at.elapsed();
    assert!(
        noticed_after <= Duration::from_secs(2),
        "CrashLoopBackOff shown {noticed_after:?} after the failed start (at most 2 s)"
    );
    let looping = status(&h, "app-1");
    assert_eq!(
        looping.containers[0].reason.as_deref(),
        Some(CRASH_LOOP_BACK_OFF)
    );
    assert_eq!(reasons(&looping), ["Created", "Failed", "BackOff"]);
    assert!(
        h.container("app-1", "main").backing_off,
        "saved with the record"
    );
    // The restart clears it.
    h.step_until("started").await;
    assert_eq!(status(&h, "app-1").containers[0].reason, None);
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_of_a_thousand_restarts_keeps_the_last_events() {
    let mut h = Harness::new();
    h.create("app-1", ONE_PROCESS, "Always").await;
    h.step_until("started").await;
    for _ in 0..1000 {
        h.exit("app-1", "main", exit_code(3));
        h.step_until("exited").await;
        h.step_until("started").await;
    }
    let status = status(&h, "app-1");
    assert_eq!(status.realtime.restart_count, 1000);
    assert_eq!(status.history.len(), MAX_POD_EVENTS);
    let seqs: Vec<u64> = status.history.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let last = status.history.last().unwrap();
    assert_eq!(last.reason, "Started");
    assert!(
        status
            .history
            .iter()
            .any(|e| e.reason == "Exited" && e.message.ends_with("(code 3)"))
    );
    // The events go with the pod; its last report carries them.
    h.agent.destroy("app-1");
    h.step_until("stopped").await;
    assert!(h.agent.events.is_empty());
}
