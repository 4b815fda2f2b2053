//! The log shipper against a real receiver: Debian's rsyslog (imtcp,
//! RFC 5424 with octet-counted framing), started by the test with a config
//! of its own, and the JSON-lines file sink. The riklet is killed with
//! SIGKILL and rsyslog stopped while the app prints: every line arrives,
//! duplicates only in whole batches at those events. Then 2 s of silence
//! and a burst of 20,000 lines: each arrives once.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use riklet_e2e::{Cluster, Mode, Options, free_port, http_get, wait_for};
use serde_json::Value;

/// Most records in a batch (the riklet's `shipper::MAX_BATCH`).
const MAX_BATCH: usize = 1000;
/// Lines the app prints, `seq=1` to `seq=LINES`, about 200 a second,
/// then one line of `BIG` zeros.
const LINES: usize = 3000;
/// 1 MiB: shipped as one record.
const BIG: usize = 1 << 20;
/// Lines printed at once, `burst=1` to `burst=BURST`, after 2 s of silence
/// that follow the big line.
const BURST: usize = 20_000;

/// Whether `text` has a line ending with `BIG` zeros after a space or a
/// quote.
fn has_big_line(text: &str) -> bool {
    let zeros = "0".repeat(BIG);
    text.lines().any(|l| {
        l.trim_end_matches(['"', '}'])
            .strip_suffix(zeros.as_str())
            .is_some_and(|head| head.ends_with([' ', '"']))
    })
}

/// An rsyslogd of the test's own: TCP input on a free port, every
/// message written to `received.log` as `APP PROCID MSGID SD MSG`.
struct Rsyslog {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn rsyslogd() -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("rsyslogd"))
        .find(|p| p.exists());
    found.expect("rsyslogd not found: install the Debian package rsyslog (`cargo xtask setup`)")
}

impl Rsyslog {
    fn new(dir: &Path) -> Rsyslog {
        Rsyslog {
            dir: dir.into(),
            port: free_port(),
            child: None,
        }
    }

    fn output(&self) -> PathBuf {
        self.dir.join("received.log")
    }

    fn start(&mut self) {
        let conf = self.dir.join("rsyslog.conf");
        let config = format!(
            "global(maxMessageSize=\"2m\" workDirectory=\"{dir}\")\n\
             module(load=\"imtcp\" maxFrameSize=\"2200000\")\n\
             template(name=\"rik\" type=\"string\" string=\"%app-name% %procid% %msgid% %structured-data% %msg%\\n\")\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
             *.* action(type=\"omfile\" file=\"{out}\" template=\"rik\")\n",
            dir = self.dir.display(),
            port = self.port,
            out = self.output().display(),
        );
        std::fs::write(&conf, config).expect("write rsyslog.conf");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.log"))
            .expect("rsyslogd.log");
        let child = Command::new(rsyslogd())
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start rsyslogd (Debian package rsyslog)");
        self.child = Some(child);
        let port = self.port;
        wait_for(Duration::from_secs(10), "rsyslogd to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(drop)
        });
    }

    /// SIGTERM, and wait until it has exited.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    fn received(&self) -> String {
        std::fs::read_to_string(self.output()).unwrap_or_default()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How many times each `seq=N` occurs in `text`.
fn counts(text: &str) -> BTreeMap<usize, usize> {
    counts_of("seq=", text)
}

/// How many times each `<key>N` occurs in `text`.
fn counts_of(key: &str, text: &str) -> BTreeMap<usize, usize> {
    let mut seen = BTreeMap::new();
    for line in text.lines() {
        let number = line.split_once(key).and_then(|(_, rest)| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        });
        if let Some(n) = number {
            *seen.entry(n).or_insert(0) += 1;
        }
    }
    seen
}

/// Every line present; duplicated numbers in at most `events` runs of
/// consecutive numbers, each no longer than a batch.
fn assert_complete(what: &str, seen: &BTreeMap<usize, usize>, events: usize) {
    let missing: Vec<usize> = (1..=LINES).filter(|n| !seen.contains_key(n)).collect();
    assert!(missing.is_empty(), "{what}: lines lost: {missing:?}");
    let dups: Vec<usize> = seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    let mut runs: Vec<Vec<usize>> = Vec::new();
    for n in &dups {
        match runs.last_mut() {
            Some(run) if run.last() == Some(&(n - 1)) => run.push(*n),
            _ => runs.push(vec![*n]),
        }
    }
    eprintln!(
        "{what}: {} duplicated lines in {} runs",
        dups.len(),
        runs.len()
    );
    assert!(
        runs.len() <= events && runs.iter().all(|r| r.len() <= MAX_BATCH),
        "{what}: duplicates beyond the last batch of each event: {runs:?}"
    );
}

/// The value of the series `name{sink="SINK"}`.
fn counter(body: &str, name: &str, sink: &str) -> u64 {
    let prefix = format!("{name}{{sink=\"{sink}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{body}"))
}

#[test]
fn ships_to_rsyslog_and_a_file_across_kills_and_outages() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut rsyslog = Rsyslog::new(work.path());
    rsyslog.start();
    let json = work.path().join("shipped.json");
    let sinks = format!(
        "[[logs.sinks]]\nkind = \"syslog\"\naddress = \"127.0.0.1:{}\"\n\
         [[logs.sinks]]\nkind = \"file\"\npath = \"{}\"\n",
        rsyslog.port,
        json.display()
    );
    let mut cluster = Cluster::start_with(
        Mode::Standalone,
        Options {
            extra_config: Some(sinks),
            ..Options::default()
        },
    );
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nname: shipped\nspec:\n  containers:\n    - name: main\n      \
         exec: /bin/busybox\n      args: [sh, -c, \"i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); \
         echo seq=$i; usleep 5000; done; printf %0{BIG}d 0; echo; sleep 2; \
         seq 1 {BURST} | sed s/^/burst=/; sleep 3600\"]\n"
    );
    let out = cluster.apply(&manifest, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = cluster.wait_app("shipped", "the app to run", |a| a["state"] == "RUNNING");
    let instance = app["appId"].as_str().expect("appId").to_string();

    let distinct =
        |min: usize| move |r: &Rsyslog| (counts(&r.received()).len() >= min).then_some(());
    let first = distinct(200);
    wait_for(Duration::from_secs(60), "200 lines at rsyslog", || {
        first(&rsyslog)
    });
    let text = rsyslog.received();
    let line = text.lines().find(|l| l.contains("seq=")).expect("a line");
    assert!(
        line.starts_with(&format!("shipped {instance} stdout [rik@32473 ")),
        "{line}"
    );
    for label in [
        "app=\"shipped\"".to_string(),
        format!("instance=\"{instance}\""),
        "container=\"main\"".into(),
        format!("node=\"{}\"", cluster.node),
        "stream=\"stdout\"".into(),
    ] {
        assert!(line.contains(&label), "{label} in {line}");
    }

    // kill -9 of the riklet while the app prints; the shim keeps writing.
    cluster.kill_riklet();
    std::thread::sleep(Duration::from_secs(1));
    cluster.start_riklet();

    let middle = distinct(1200);
    wait_for(Duration::from_secs(60), "1200 lines at rsyslog", || {
        middle(&rsyslog)
    });
    // The receiver down for 10 s while the app prints.
    rsyslog.stop();
    std::thread::sleep(Duration::from_secs(10));
    rsyslog.start();

    let all = distinct(LINES);
    wait_for(Duration::from_secs(120), "every line at rsyslog", || {
        all(&rsyslog)
    });
    // The kill, then the outage: the batch that failed and the one before.
    assert_complete("rsyslog", &counts(&rsyslog.received()), 3);
    wait_for(Duration::from_secs(30), "the 1 MiB line at rsyslog", || {
        has_big_line(&rsyslog.received()).then_some(())
    });

    wait_for(
        Duration::from_secs(60),
        "every line in the JSON file",
        || {
            let text = std::fs::read_to_string(&json).unwrap_or_default();
            (counts(&text).len() >= LINES).then_some(())
        },
    );
    wait_for(
        Duration::from_secs(30),
        "the 1 MiB line in the JSON file",
        || has_big_line(&std::fs::read_to_string(&json).unwrap_or_default()).then_some(()),
    );
    let text = std::fs::read_to_string(&json).expect("JSON file");
    assert_complete("file", &counts(&text), 1);

    // Silence, then a burst: every line once at both sinks.
    for (what, read) in [
        (
            "rsyslog",
            Box::new(|| rsyslog.received()) as Box<dyn Fn() -> String>,
        ),
        (
            "the JSON file",
            Box::new(|| std::fs::read_to_string(&json).unwrap_or_default()),
        ),
    ] {
        let seen = wait_for(
            Duration::from_secs(60),
            &format!("the burst at {what}"),
            || {
                let seen = counts_of("burst=", &read());
                (seen.len() >= BURST).then_some(seen)
            },
        );
        assert!(
            seen.keys().copied().eq(1..=BURST) && seen.values().all(|&c| c == 1),
            "{what}: burst lines lost or doubled"
        );
    }
    let first: Value = serde_json::from_str(text.lines().next().expect("a line")).expect("JSON");
    assert_eq!(first["app"], "shipped");
    assert_eq!(first["instance"], instance.as_str());
    assert_eq!(first["container"], "main");
    assert_eq!(first["node"], cluster.node.as_str());
    assert_eq!(first["stream"], "stdout");
    assert_eq!(first["message"], "seq=1");
    assert!(
        first["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{first}"
    );

    let (_, body) = http_get(cluster.metrics_port(), "/metrics").expect("GET /metrics");
    let syslog = format!("syslog://127.0.0.1:{}", rsyslog.port);
    assert!(counter(&body, "riklet_log_shipper_shipped_records_total", &syslog) > 0);
    assert!(
        counter(&body, "riklet_log_shipper_retried_records_total", &syslog) > 0,
        "the outage retried nothing"
    );
    let file = format!("file:{}", json.display());
    assert_eq!(
        counter(&body, "riklet_log_shipper_retried_records_total", &file),
        0
    );
    for sink in [&syslog, &file] {
        assert_eq!(
            counter(&body, "riklet_log_shipper_cut_records_total", sink),
            0,
            "{sink}"
        );
    }
}
