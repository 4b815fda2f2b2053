//! Hostile manifests: what an attacker (or a fuzzer) would send to `rik
//! apply`, the scheduler or, as a `definition`, straight to a riklet. Each
//! is refused, and the error names the field at fault (`(document)` for
//! what is wrong with the document as a whole: size, syntax, aliases).

use super::super::*;

/// A one-container bare-process workload, `app` and `c`, with `top`
/// (top-level lines) and `extra` (container lines, 6 spaces deep).
fn doc(top: &str, extra: &str) -> String {
    format!("kind: Pod\n{top}spec:\n  containers:\n    - name: c\n{extra}")
}

fn named(name: &str) -> String {
    doc(&format!("name: {name}\n"), "      exec: /bin/true\n")
}

fn container(extra: &str) -> String {
    doc("name: app\n", extra)
}

fn exec(extra: &str) -> String {
    container(&format!("      exec: /bin/true\n{extra}"))
}

fn image(reference: &str) -> String {
    container(&format!("      image: {reference}\n"))
}

/// `depth` nested flow sequences.
fn nested(depth: usize) -> String {
    format!(
        "kind: Pod\nname: app\nspec: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

/// The billion laughs: 9 levels of aliases, each repeating the one
/// below 9 times.
fn laughs() -> String {
    let mut doc = String::from(
        "kind: Pod\nname: app\na0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10 {
        let p = i - 1;
        doc.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    doc.push_str("spec: {containers: [{name: c, exec: /bin/true}]}\n");
    doc
}

fn containers(n: usize) -> String {
    let list: Vec<String> = (0..n)
        .map(|i| format!("{{name: c{i}, exec: /bin/true}}"))
        .collect();
    format!(
        "kind: Pod\nname: app\nspec: {{containers: [{}]}}\n",
        list.join(", ")
    )
}

const C0: &str = "spec.containers[0]";

/// (attack, document, field path, phrase of the reason).
#[rustfmt::skip]
fn attacks() -> Vec<(&'static str, String, String, &'static str)> {
    let c0 = |f: &str| format!("{C0}.{f}");
    let top = |f: &str| f.to_string();
    vec![
        // Names that become paths, cgroups, netns and log directories.
        ("app name traversal", named("../x"), top("name"), "DNS-1123"),
        ("app name deep traversal", named("x/../../etc"), top("name"), "DNS-1123"),
        ("app name dot", named("\".\""), top("name"), "DNS-1123"),
        ("app name dot-dot", named("\"..\""), top("name"), "DNS-1123"),
        ("app name NUL", named("\"a\\0b\""), top("name"), "DNS-1123"),
        ("app name newline", named("\"a\\nb\""), top("name"), "DNS-1123"),
        ("app name option", named("\"-rf\""), top("name"), "DNS-1123"),
        ("app name empty", named("\"\""), top("name"), "must not be empty"),
        ("app name 64 characters", named(&"a".repeat(64)), top("name"), "at most 63"),
        ("app name 100000 characters", named(&"a".repeat(100_000)), top("name"), "at most 63"),
        ("app name Cyrillic a", named("\u{430}pp"), top("name"), "DNS-1123"),
        ("app name fullwidth", named("\u{ff41}pp"), top("name"), "DNS-1123"),
        ("app name zero-width space", named("\"ap\u{200b}p\""), top("name"), "DNS-1123"),
        ("app name right-to-left override", named("\"app\u{202e}\""), top("name"), "DNS-1123"),
        ("app name JSON NUL escape", r#"{"kind":"Pod","name":"a\u0000","spec":{"containers":[{"name":"c","exec":"/bin/true"}]}}"#.into(), top("name"), "DNS-1123"),
        ("container name traversal", doc("name: app\n", "      exec: /bin/true\n").replace("name: c", "name: ../etc"), c0("name"), "DNS-1123"),
        ("container name slash", doc("name: app\n", "      exec: /bin/true\n").replace("name: c", "name: a/b"), c0("name"), "DNS-1123"),
        ("container name NUL", doc("name: app\n", "      exec: /bin/true\n").replace("name: c", "name: \"c\\0\""), c0("name"), "DNS-1123"),
        ("container name blank", doc("name: app\n", "      exec: /bin/true\n").replace("name: c", "name: \"a b\""), c0("name"), "DNS-1123"),
        ("container name Greek o", doc("name: app\n", "      exec: /bin/true\n").replace("name: c", "name: \u{3bf}"), c0("name"), "DNS-1123"),
        ("container name too long", doc("name: app\n", "      exec: /bin/true\n").replace("name: c", &format!("name: {}", "c".repeat(64))), c0("name"), "at most 63"),
        ("container name twice", "kind: Pod\nname: app\nspec: {containers: [{name: c, exec: /bin/true}, {name: c, exec: /bin/true}]}".into(), "spec.containers[1].name".into(), "duplicate"),
        ("65 containers", containers(65), top("spec.containers"), "at most 64"),
        // Numbers out of range.
        ("replicas huge", named("app").replace("kind: Pod\n", "kind: Pod\nreplicas: 1000000\n"), top("replicas"), "more than the 1000"),
        ("replicas over u32", named("app").replace("kind: Pod\n", "kind: Pod\nreplicas: 4294967296\n"), top("replicas"), "expected a number of replicas"),
        // Beyond u64 the YAML parser itself refuses; the path is named as
        // the other errors name it.
        ("replicas over u64", named("app").replace("kind: Pod\n", "kind: Pod\nreplicas: 99999999999999999999999\n"), top("replicas"), "out of range"),
        ("replicas negative", named("app").replace("kind: Pod\n", "kind: Pod\nreplicas: -5\n"), top("replicas"), "expected a number of replicas"),
        ("replicas fraction", named("app").replace("kind: Pod\n", "kind: Pod\nreplicas: 1.5\n"), top("replicas"), "expected a number of replicas"),
        ("replicas infinite", named("app").replace("kind: Pod\n", "kind: Pod\nreplicas: .inf\n"), top("replicas"), "expected a number of replicas"),
        ("port negative", exec("      ports: {port: -1}\n"), c0("ports[0].port"), "expected a port number"),
        ("port zero", exec("      ports: {port: 0}\n"), c0("ports[0].port"), "expected a port number"),
        ("port 65536", exec("      ports: {port: 65536}\n"), c0("ports[0].port"), "expected a port number"),
        ("port over u64", exec("      ports: {port: 18446744073709551616}\n"), c0("ports[0].port"), "out of range"),
        ("port in a list over u64", exec("      ports: [{port: 80}, {port: -18446744073709551617}]\n"), c0("ports[1].port"), "out of range"),
        ("port fraction", exec("      ports: {port: 80.5}\n"), c0("ports[0].port"), "expected a port number"),
        ("target port negative", exec("      ports: {port: 80, target_port: -80}\n"), c0("ports[0].target_port"), "expected a port number"),
        ("port twice", exec("      ports: [{port: 80}, {port: 80, target_port: 81}]\n"), c0("ports[1].port"), "exposed twice"),
        ("port type with a newline", exec("      ports: {port: 80, type: \"nodePort\\nINFO forged\"}\n"), c0("ports[0].type"), "not a port type"),
        ("protocol ICMP", exec("      ports: {port: 80, protocol: ICMP}\n"), c0("ports[0].protocol"), "not TCP, UDP or SCTP"),
        ("logs maxFiles over u32", exec("").replace("spec:\n", "spec:\n  logs: {maxFiles: 4294967296}\n"), top("spec.logs.maxFiles"), "u32"),
        // Image references.
        ("image traversal", image("../../etc/passwd"), c0("image"), "not a valid image reference"),
        ("image tag traversal", image("busybox:../x"), c0("image"), "not a valid image reference"),
        ("image NUL", image("\"busybox\\0\""), c0("image"), "not a valid image reference"),
        ("image Greek o", image("busyb\u{3bf}x"), c0("image"), "not a valid image reference"),
        ("image name too long", image(&"a".repeat(300)), c0("image"), "not a valid image reference"),
        ("image bad digest", image("alpine@sha256:xyz"), c0("image"), "not a valid image reference"),
        ("image option", image("\"--help\""), c0("image"), "not a valid image reference"),
        ("image blank", image("\"alpine latest\""), c0("image"), "not a valid image reference"),
        ("image URL", image("http://evil.example/x"), c0("image"), "not a valid image reference"),
        // What reaches execve.
        ("env name newline", exec("      env: [{name: \"A\\nB\", value: c}]\n"), c0("env[0].name"), "not a valid variable name"),
        ("env name escape sequence", exec("      env: [{name: \"\\e[31mA\", value: c}]\n"), c0("env[0].name"), "not a valid variable name"),
        ("env name blank", exec("      env: [{name: \"A B\", value: c}]\n"), c0("env[0].name"), "not a valid variable name"),
        ("env name with =", exec("      env: [{name: \"LD_PRELOAD=/tmp/x.so\", value: c}]\n"), c0("env[0].name"), "not a valid variable name"),
        ("env name unicode", exec("      env: [{name: \"\u{c4}\", value: c}]\n"), c0("env[0].name"), "not a valid variable name"),
        ("env value NUL", exec("      env: [{name: A, value: \"x\\0LD_PRELOAD=/x\"}]\n"), c0("env[0].value"), "NUL"),
        ("second env name NUL", exec("      env: [{name: A, value: b}, {name: \"B\\0\", value: c}]\n"), c0("env[1].name"), "not a valid variable name"),
        ("exec relative", container("      exec: ../../bin/sh\n"), c0("exec"), "absolute path"),
        ("exec traversal", container("      exec: /bin/../../etc/shadow\n"), c0("exec"), "'..'"),
        ("exec NUL", container("      exec: \"/bin/true\\0/evil\"\n"), c0("exec"), "NUL"),
        ("exec too long", container(&format!("      exec: /{}\n", "a".repeat(5000))), c0("exec"), "at most 4095"),
        ("args NUL", exec("      args: [\"-c\", \"x\\0y\"]\n"), c0("args[1]"), "NUL"),
        ("command NUL", container("      image: busybox\n      command: [\"/bin/sh\\0\"]\n"), c0("command[0]"), "NUL"),
        // Quantities.
        ("cpu negative", exec("      resources: {cpu: \"-1\"}\n"), c0("resources.cpu"), "not a CPU quantity"),
        ("cpu infinite", exec("      resources: {cpu: \"1e400\"}\n"), c0("resources.cpu"), "not a CPU quantity"),
        ("cpu NaN", exec("      resources: {cpu: NaN}\n"), c0("resources.cpu"), "not a CPU quantity"),
        ("memory overflow", exec("      resources: {memory: 18446744073709551615Ki}\n"), c0("resources.memory"), "not a memory quantity"),
        ("memory negative", exec("      resources: {memory: \"-64Mi\"}\n"), c0("resources.memory"), "not a memory quantity"),
        // Fields that would widen what a pod may do.
        ("hostPID", exec("").replace("spec:\n", "spec:\n  hostPID: true\n"), top("spec.hostPID"), "unknown field"),
        ("hostPath volume", exec("").replace("spec:\n", "spec:\n  volumes: [{hostPath: /}]\n"), top("spec.volumes"), "unknown field"),
        ("privileged", exec("      securityContext: {privileged: true}\n"), c0("securityContext"), "unknown field"),
        ("workingDir", exec("      workingDir: /etc\n"), c0("workingDir"), "unknown field"),
        // The document itself.
        ("deeply nested", nested(100_000), top("(document)"), "at most 64 allowed"),
        ("nested 65 deep", nested(65), top("(document)"), "65 deep"),
        ("nested in strings", format!("{}{}", named("app"), format!("x: \"{}\"\n", "]".repeat(100)).repeat(2) + &"[".repeat(70)), top("(document)"), "deep"),
        ("billion laughs", laughs(), top("(document)"), "repetition limit"),
        ("huge document", format!("{}# {}\n", named("app"), "x".repeat(MAX_MANIFEST_BYTES)), top("(document)"), "bytes allowed"),
        ("duplicate key", named("app").replace("kind: Pod\n", "kind: Pod\nname: other\n"), top("(document)"), "duplicate"),
        ("two documents", format!("{}---\n{}", named("app"), named("app")), top("(document)"), "more than one document"),
        ("a scalar", "42".into(), top("(document)"), "mapping"),
        ("binary tag", named("!!binary YWJj"), top("name"), ""),
    ]
}

/// The field an error names; size and syntax errors are the document's.
fn field_and_reason(e: &ManifestError) -> (String, String) {
    match e {
        ManifestError::Field { field, reason } => (field.clone(), reason.clone()),
        other => ("(document)".into(), other.to_string()),
    }
}

#[test]
fn hostile_manifests_are_refused_naming_the_field() {
    let attacks = attacks();
    assert!(attacks.len() >= 50, "only {} attacks", attacks.len());
    let mut wrong = Vec::new();
    for (attack, doc, field, phrase) in attacks {
        match parse(&doc) {
            Err(e) => {
                let (f, reason) = field_and_reason(&e);
                if f != field || !reason.contains(phrase) {
                    let reason: String = reason.chars().take(200).collect();
                    wrong.push(format!(
                        "{attack}: expected `{field}: …{phrase}…`, got `{f}: {reason}`"
                    ));
                }
            }
            Ok(m) => wrong.push(format!("{attack}: accepted as {:?}", m.name)),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} attacks not refused as expected:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Inputs the `manifest` fuzz target once crashed on
/// (`fuzz/regressions/manifest/`): whatever `parse` accepts, its
/// definition parses back to the same manifest.
#[test]
fn fuzz_regressions_round_trip() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/manifest");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut seen = 0;
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let text = String::from_utf8(std::fs::read(&path).expect("read")).expect("UTF-8");
        if let Ok(m) = parse(&text) {
            let again = parse_definition(&m.to_definition());
            assert_eq!(again.as_ref(), Ok(&m), "{}", path.display());
        }
        seen += 1;
    }
    assert!(seen > 0, "no regression input in {}", dir.display());
}
