//! `apply --wait` and `get -w` against scripted `Watch` answers: woken by
//! the watch, resumed from the last revision, listed again when told to.

use proto::rik::v1::watch_event::Type;

use super::*;

fn ev(kind: Type, revision: u64, app: Option<App>) -> Result<WatchEvent, Status> {
    Ok(WatchEvent {
        r#type: kind as i32,
        revision,
        app,
    })
}

fn synced(revision: u64) -> Result<WatchEvent, Status> {
    ev(Type::Synced, revision, None)
}

fn web_is(status: &str) -> App {
    let mut app = web(vec![inst("web-1", "node-a", status, "")]);
    app.status = status.into();
    app
}

fn named(name: &str, status: &str) -> App {
    App {
        name: name.into(),
        ..web_is(status)
    }
}

fn script(fake: &Fake, watches: Vec<WatchScript>) {
    let mut state = fake.0.lock().unwrap();
    state.watches = watches.into();
    state.watch_requests.clear();
    state.calls.clear();
}

/// `rik get ARGV` until it fails (the scripts end with a refusal that is
/// not retried): what it printed, and the error.
async fn get_until_error(url: &str, argv: &[&str]) -> (String, String) {
    let args = GetCli::try_parse_from(std::iter::once("get").chain(argv.iter().copied()))
        .unwrap()
        .args;
    let mut scheduler = Scheduler::connect(url).await.unwrap();
    let mut out = Vec::new();
    let err = get::run(args, &mut scheduler, &mut out).await.unwrap_err();
    (String::from_utf8(out).unwrap(), err.to_string())
}

fn stop() -> WatchScript {
    WatchScript::Refused(Status::invalid_argument("end of the script"))
}

#[tokio::test]
async fn apply_wait_is_woken_by_the_watch() {
    let fake = Fake::default();
    let url = serve(fake.clone()).await;
    let file = manifest_file(MANIFEST);
    script(
        &fake,
        vec![WatchScript::Events(
            vec![
                ev(Type::Added, 1, Some(web(vec![]))),
                synced(1),
                ev(Type::Modified, 2, Some(web_is("CREATING"))),
                ev(Type::Modified, 3, Some(web_is("RUNNING"))),
            ],
            false,
        )],
    );
    assert_eq!(
        apply(&url, &file, &["--wait"]).await.unwrap(),
        "app/web created\napp/web running\n"
    );
    let state = fake.0.lock().unwrap();
    assert_eq!(state.calls, ["Apply", "Watch"], "no polling");
    assert_eq!(state.watch_requests, [("web".to_string(), 0)]);
}

#[tokio::test]
async fn apply_wait_fails_at_once_times_out_or_sees_a_delete() {
    let fake = Fake::default();
    let url = serve(fake.clone()).await;
    let file = manifest_file(MANIFEST);
    let failed = web(vec![inst(
        "web-1",
        "node-a",
        "FAILED",
        r#"{"reason":"exec format error"}"#,
    )]);
    script(
        &fake,
        vec![WatchScript::Events(
            vec![ev(Type::Added, 1, Some(failed)), synced(1)],
            false,
        )],
    );
    let err = apply(&url, &file, &["--wait"]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "app/web: instance web-1 on node-a failed: exec format error"
    );

    script(
        &fake,
        vec![WatchScript::Events(
            vec![ev(Type::Added, 1, Some(web_is("CREATING"))), synced(1)],
            false,
        )],
    );
    let err = apply(&url, &file, &["--wait", "--timeout", "300ms"])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "app/web not running after 300ms: web-1 on node-a is CREATING"
    );

    script(
        &fake,
        vec![WatchScript::Events(
            vec![
                ev(Type::Added, 1, Some(web_is("CREATING"))),
                synced(1),
                ev(Type::Deleted, 2, Some(web_is("CREATING"))),
            ],
            false,
        )],
    );
    let err = apply(&url, &file, &["--wait"]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "app/web was deleted while waiting for it to run"
    );
}

#[tokio::test]
async fn apply_wait_resumes_a_broken_watch_and_lists_again_when_told() {
    let fake = Fake::default();
    let url = serve(fake.clone()).await;
    let file = manifest_file(MANIFEST);
    script(
        &fake,
        vec![
            // The stream ends (the scheduler stops) after one change...
            WatchScript::Events(
                vec![
                    ev(Type::Added, 3, Some(web_is("PENDING"))),
                    synced(5),
                    ev(Type::Modified, 6, Some(web_is("CREATING"))),
                ],
                true,
            ),
            // ...the scheduler is away for a moment...
            WatchScript::Refused(Status::unavailable("restarting")),
            // ...then the stream breaks again...
            WatchScript::Events(vec![Err(Status::resource_exhausted("fell behind"))], false),
            // ...and the scheduler cannot replay from 6 any more.
            WatchScript::Refused(Status::out_of_range("list again")),
            WatchScript::Events(
                vec![ev(Type::Added, 9, Some(web_is("RUNNING"))), synced(9)],
                false,
            ),
        ],
    );
    assert_eq!(
        apply(&url, &file, &["--wait"]).await.unwrap(),
        "app/web created\napp/web running\n"
    );
    let state = fake.0.lock().unwrap();
    let since: Vec<u64> = state.watch_requests.iter().map(|(_, s)| *s).collect();
    assert_eq!(since, [0, 6, 6, 6, 0]);
    assert!(!state.calls.contains(&"GetApp"));
}

#[tokio::test]
async fn get_apps_watch_prints_the_table_then_each_change() {
    let fake = Fake::default();
    let url = serve(fake.clone()).await;
    let changes = vec![
        ev(Type::Added, 1, Some(web_is("RUNNING"))),
        synced(2),
        ev(Type::Added, 3, Some(named("db", "PENDING"))),
        // Not visible in the columns: no line. A wider cell widens its
        // column from then on.
        ev(Type::Modified, 4, Some(named("db", "PENDING"))),
        ev(Type::Modified, 5, Some(named("database", "CREATING"))),
        ev(Type::Modified, 6, Some(named("db", "RUNNING"))),
        ev(Type::Deleted, 7, Some(web_is("RUNNING"))),
    ];
    script(
        &fake,
        vec![WatchScript::Events(changes.clone(), true), stop()],
    );
    let (out, err) = get_until_error(&url, &["apps", "-w"]).await;
    assert_eq!(err, "end of the script");
    assert_eq!(
        out,
        "NAME   STATUS    AGE\n\
         web    Running   3h5m\n\
         db     Pending   3h5m\n\
         database   ContainerCreating   3h5m\n\
         db         Running             3h5m\n\
         web        DELETED             3h5m\n"
    );
    // The stream ended: resumed from the last revision.
    let since: Vec<u64> = fake
        .0
        .lock()
        .unwrap()
        .watch_requests
        .iter()
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(since, [0, 7]);

    script(&fake, vec![WatchScript::Events(changes, true), stop()]);
    let (out, _) = get_until_error(&url, &["apps", "-w", "-o", "json"]).await;
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(String, u64, String)> = lines
        .iter()
        .map(|l| {
            (
                l["type"].as_str().unwrap().to_string(),
                l["revision"].as_u64().unwrap(),
                l["app"]["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want = [
        ("ADDED", 2, "web"),
        ("SYNCED", 2, ""),
        ("ADDED", 3, "db"),
        ("MODIFIED", 4, "db"),
        ("MODIFIED", 5, "database"),
        ("MODIFIED", 6, "db"),
        ("DELETED", 7, "web"),
    ];
    assert_eq!(
        seen,
        want.map(|(t, r, n)| (t.to_string(), r, n.to_string()))
    );
    assert_eq!(lines[6]["app"]["status"], "RUNNING", "last state");
    assert_eq!(lines[0]["app"]["instances"][0]["appId"], "web-1");
}

#[tokio::test]
async fn get_watch_lists_again_after_a_resync_and_checks_the_name() {
    let fake = Fake::default();
    let url = serve(fake.clone()).await;
    script(
        &fake,
        vec![
            WatchScript::Events(
                vec![
                    ev(Type::Added, 1, Some(web_is("RUNNING"))),
                    ev(Type::Added, 2, Some(named("db", "PENDING"))),
                    synced(2),
                ],
                true,
            ),
            WatchScript::Refused(Status::out_of_range("too old")),
            WatchScript::Events(
                vec![
                    ev(Type::Added, 4, Some(named("db", "RUNNING"))),
                    ev(Type::Added, 8, Some(named("api", "PENDING"))),
                    synced(9),
                ],
                true,
            ),
            stop(),
        ],
    );
    let (out, _) = get_until_error(&url, &["apps", "--watch"]).await;
    assert_eq!(
        out,
        "NAME   STATUS    AGE\n\
         db     Pending   3h5m\n\
         web    Running   3h5m\n\
         web    DELETED   3h5m\n\
         api    Pending   3h5m\n\
         db     Running   3h5m\n"
    );

    // One app: it must exist; its lines are `rik get app NAME -o json`.
    script(
        &fake,
        vec![WatchScript::Events(
            vec![ev(Type::Added, 1, Some(web_is("RUNNING"))), synced(1)],
            false,
        )],
    );
    let (_, err) = get_until_error(&url, &["app", "nope", "-w"]).await;
    assert_eq!(err, "app nope not found");
    script(
        &fake,
        vec![
            WatchScript::Events(
                vec![ev(Type::Added, 1, Some(web_is("RUNNING"))), synced(1)],
                true,
            ),
            stop(),
        ],
    );
    let (out, _) = get_until_error(&url, &["app/web", "-w", "-o", "json"]).await;
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["app"]["appId"], "web-1");
    assert_eq!(
        fake.0.lock().unwrap().watch_requests[0],
        ("web".to_string(), 0)
    );
    let (_, err) = get_until_error(&url, &["nodes", "-w"]).await;
    assert_eq!(err, "--watch is for apps and events only");
}
