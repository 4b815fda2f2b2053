//! `Watch` through gRPC: the listing, changes pushed as the fake riklet
//! reports them, the end at shutdown, and the resume after a restart.

use std::collections::BTreeMap;

use proto::rik::v1::watch_event::Type;
use proto::rik::v1::{WatchEvent, WatchRequest};

use super::*;

const DB: &str = "kind: Pod\nname: db\nspec:\n  containers:\n    - {name: c, exec: /bin/true}\n";
const API: &str = "kind: Pod\nname: api\nspec:\n  containers:\n    - {name: c, exec: /bin/true}\n";

async fn watch(rik: &mut RikClient<Channel>, name: &str, since: u64) -> Streaming<WatchEvent> {
    rik.watch(WatchRequest {
        name: name.into(),
        since_revision: since,
    })
    .await
    .expect("watch accepted")
    .into_inner()
}

async fn event(stream: &mut Streaming<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an event in time")
        .expect("watch healthy")
        .expect("watch open")
}

/// `(type, app name, app status)` of an event.
fn seen(e: &WatchEvent) -> (Type, String, String) {
    let (name, status) = e
        .app
        .as_ref()
        .map(|a| (a.name.clone(), a.status.clone()))
        .unwrap_or_default();
    (e.r#type(), name, status)
}

fn t(kind: Type, name: &str, status: &str) -> (Type, String, String) {
    (kind, name.into(), status.into())
}

async fn apply(rik: &mut RikClient<Channel>, manifest: &str) -> u64 {
    rik.apply(ApplyRequest {
        manifest: manifest.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .revision
}

/// A ready fake node; returns its register stream and status sender.
async fn ready_node(
    sched: &Scheduler,
    rik: &mut RikClient<Channel>,
) -> (Streaming<InstanceScheduling>, mpsc::Sender<WorkerStatus>) {
    let mut worker = sched.worker().await;
    let stream = register(&mut worker).await;
    let statuses = status_stream(worker);
    statuses.send(worker_running("")).await.unwrap();
    eventually("node ready", || {
        let mut rik = rik.clone();
        async move { node(&mut rik).await.ready.then_some(()) }
    })
    .await;
    (stream, statuses)
}

#[tokio::test]
async fn watch_lists_pushes_changes_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sched = Scheduler::start(dir.path()).await;
    let mut rik = sched.rik().await;
    let (mut register_stream, statuses) = ready_node(&sched, &mut rik).await;
    let applied = rik
        .apply(ApplyRequest {
            manifest: WEB.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let id = applied.instance_ids[0].clone();
    next(&mut register_stream).await;

    // The current state, then SYNCED at the apply's revision.
    let mut all = watch(&mut rik, "", 0).await;
    let mut one = watch(&mut rik, "web", 0).await;
    for w in [&mut all, &mut one] {
        assert_eq!(seen(&event(w).await), t(Type::Added, "web", "PENDING"));
        let synced = event(w).await;
        assert_eq!(
            (synced.r#type(), synced.revision, synced.app),
            (Type::Synced, applied.revision, None)
        );
    }

    // Pushed as the node reports; a report that changes no status is not
    // an event.
    statuses
        .send(instance_status(&id, ResourceStatus::Running))
        .await
        .unwrap();
    statuses
        .send(instance_status(&id, ResourceStatus::Running))
        .await
        .unwrap();
    let running = event(&mut all).await;
    assert_eq!(seen(&running), t(Type::Modified, "web", "RUNNING"));
    assert!(running.revision > applied.revision);
    assert_eq!(seen(&event(&mut one).await), seen(&running));
    let db = apply(&mut rik, DB).await;
    let added = event(&mut all).await;
    assert_eq!(
        (seen(&added), added.revision),
        (t(Type::Added, "db", "PENDING"), db)
    );
    let last_seen = added.revision;
    // What the client knows.
    let mut state: BTreeMap<String, App> = [running, added]
        .into_iter()
        .filter_map(|e| e.app)
        .map(|a| (a.name.clone(), a))
        .collect();

    // A clean stop ends the watches without an error.
    sched.stop().await;
    for w in [&mut all, &mut one] {
        let end = tokio::time::timeout(WAIT, w.message()).await;
        assert!(matches!(end, Ok(Ok(None))), "watch ends cleanly: {end:?}");
    }

    // Back on the same state. The node reports web FAILED before the
    // client is back: the resume from the last revision it saw replays
    // it, then the changes arrive live.
    let sched = Scheduler::start(dir.path()).await;
    let mut rik = sched.rik().await;
    let (_register_stream, statuses) = ready_node(&sched, &mut rik).await;
    statuses
        .send(instance_status(&id, ResourceStatus::Failed))
        .await
        .unwrap();
    eventually("web FAILED", || {
        let mut rik = rik.clone();
        async move { (web(&mut rik).await.status == "FAILED").then_some(()) }
    })
    .await;
    let mut all = watch(&mut rik, "", last_seen).await;
    let mut revision = last_seen;
    let mut record = |e: WatchEvent, state: &mut BTreeMap<String, App>| {
        assert!(e.revision > revision, "revisions increase");
        revision = e.revision;
        let app = e.app.clone().expect("an app");
        match e.r#type() {
            Type::Deleted => state.remove(&app.name),
            _ => state.insert(app.name.clone(), app),
        };
        seen(&e)
    };
    let failed = record(event(&mut all).await, &mut state);
    assert_eq!(failed, t(Type::Modified, "web", "FAILED"));
    rik.delete_app(DeleteAppRequest { name: "web".into() })
        .await
        .unwrap();
    // Terminating until its node reports the pod gone.
    let terminating = record(event(&mut all).await, &mut state);
    assert_eq!(terminating, t(Type::Modified, "web", "TERMINATING"));
    statuses
        .send(instance_status(&id, ResourceStatus::Terminated))
        .await
        .unwrap();
    let deleted = record(event(&mut all).await, &mut state);
    assert_eq!(
        deleted,
        t(Type::Deleted, "web", "TERMINATING"),
        "last state"
    );
    apply(&mut rik, API).await;
    let api = record(event(&mut all).await, &mut state);
    assert_eq!(api, t(Type::Added, "api", "PENDING"));
    let listed: Vec<String> = rik
        .list_apps(ListAppsRequest {})
        .await
        .unwrap()
        .into_inner()
        .apps
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(state.keys().cloned().collect::<Vec<_>>(), listed);

    // A revision it cannot replay: OUT_OF_RANGE, saying to list again.
    let err = rik
        .watch(WatchRequest {
            name: String::new(),
            since_revision: revision + 1_000,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("list again"), "{}", err.message());

    assert_eq!(
        (
            sched.calls.get("Watch"),
            sched.calls.get("Apply"),
            sched.calls.get("DeleteApp")
        ),
        (2, 1, 1)
    );
    sched.stop().await;
}
