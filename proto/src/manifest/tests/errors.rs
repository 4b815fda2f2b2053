//! Every rule of the parser, with the exact field path its error names and
//! a key phrase of what it says.

use super::super::*;

/// A workload of one container with these extra lines (6 spaces deep).
fn pod(container: &str) -> String {
    format!("kind: Pod\nname: app\nspec:\n  containers:\n    - name: c\n{container}")
}

/// A workload with this `spec` (flow style) and these extra top-level lines.
fn spec(spec: &str, top: &str) -> String {
    format!("kind: Pod\nname: app\n{top}spec: {spec}\n")
}

const EXEC: &str = "      exec: /bin/true\n";

/// (what the rule is, document, field path, phrase of the reason), one
/// rule a line.
#[rustfmt::skip]
fn rules() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let with_exec = |extra: &str| pod(&format!("{EXEC}{extra}"));
    let ok_spec = "{containers: [{name: c, exec: /bin/true}]}";
    vec![
        // The document.
        ("not a mapping", "- a\n- b\n".into(), "(document)", "mapping"),
        ("neither form", "name: a\n".into(), "kind", "expected a RIK workload"),
        ("unknown top-level field", spec(ok_spec, "replica: 2\n"), "replica", "unknown field"),
        ("apiVersion", spec(ok_spec, "apiVersion: v2\n"), "apiVersion", "expected \"v1\""),
        ("kind", "kind: Deployment\nname: a\nspec: {containers: [{name: c, exec: /bin/true}]}".into(), "kind", "expected \"Pod\""),
        ("kind missing", "name: a\nspec: {containers: [{name: c, exec: /bin/true}]}".into(), "kind", "missing"),
        ("name missing", "kind: Pod\nspec: {containers: [{name: c, exec: /bin/true}]}".into(), "name", "missing"),
        ("name not a DNS label", spec(ok_spec, "").replace("name: app", "name: My_App"), "name", "DNS-1123"),
        ("name too long", spec(ok_spec, "").replace("name: app", &format!("name: {}", "a".repeat(64))), "name", "at most 63"),
        ("name of the wrong type", spec(ok_spec, "").replace("name: app", "name: [a]"), "name", "expected a string"),
        ("replicas of the wrong type", spec(ok_spec, "replicas: \"2\"\n"), "replicas", "expected a number of replicas"),
        ("replicas negative", spec(ok_spec, "replicas: -1\n"), "replicas", "expected a number of replicas"),
        ("replicas zero", spec(ok_spec, "replicas: 0\n"), "replicas", "at least 1"),
        ("replicas too many", spec(ok_spec, "replicas: 1001\n"), "replicas", "more than the 1000"),
        ("replicas beyond 64 bits", spec(ok_spec, "replicas: 99999999999999999999999\n"), "replicas", "out of range"),
        ("more than 64 containers", spec(&format!("{{containers: [{}]}}", (0..65).map(|i| format!("{{name: c{i}, exec: /bin/true}}")).collect::<Vec<_>>().join(", ")), ""), "spec.containers", "at most 64"),
        ("deployment of the wrong type", spec(ok_spec, "deployment: web\n"), "deployment", "expected a deployment"),
        ("deployment field missing", spec(ok_spec, "deployment: {app: a, repository: r}\n"), "deployment.version", "missing"),
        // The pod spec.
        ("spec missing", "kind: Pod\nname: a\n".into(), "spec", "missing"),
        ("spec of the wrong type", "kind: Pod\nname: a\nspec: [a]\n".into(), "spec", "expected a pod spec"),
        ("unknown spec field", spec( "{containers: [{name: c, exec: /bin/true}], volumes: []}", ""),
            "spec.volumes",
            "unknown field",
        ),
        ("restartPolicy", spec( "{restartPolicy: Sometimes, containers: [{name: c, exec: /bin/true}]}", ""),
            "spec.restartPolicy",
            "unknown variant `Sometimes`, expected one of `Always`, `OnFailure`, `Never`",
        ),
        ("hostNetwork", spec( "{hostNetwork: maybe, containers: [{name: c, exec: /bin/true}]}", ""),
            "spec.hostNetwork",
            "true or false",
        ),
        ("function", spec( "{function: {}, containers: [{name: c, exec: /bin/true}]}", ""),
            "spec.function",
            "not supported",
        ),
        ("logs size too small", spec("{logs: {maxSize: 1Ki}, containers: [{name: c, exec: /bin/true}]}", ""),
            "spec.logs.maxSize",
            "less than the 64Ki minimum",
        ),
        ("logs size not a size", spec("{logs: {maxSize: big}, containers: [{name: c, exec: /bin/true}]}", ""),
            "spec.logs.maxSize",
            "not a size",
        ),
        ("logs size a number", spec("{logs: {maxSize: 65536}, containers: [{name: c, exec: /bin/true}]}", ""),
            "spec.logs.maxSize",
            "expected a string",
        ),
        ("logs files zero", spec("{logs: {maxFiles: 0}, containers: [{name: c, exec: /bin/true}]}", ""),
            "spec.logs.maxFiles",
            "at least 1",
        ),
        ("logs files negative", spec("{logs: {maxFiles: -1}, containers: [{name: c, exec: /bin/true}]}", ""),
            "spec.logs.maxFiles",
            "u32",
        ),
        ("logs unknown field", spec("{logs: {maxAge: 1d}, containers: [{name: c, exec: /bin/true}]}", ""),
            "spec.logs.maxAge",
            "unknown field",
        ),
        ("containers missing", spec("{}", ""), "spec.containers", "missing"),
        ("containers empty", spec("{containers: []}", ""), "spec.containers", "at least one container"),
        ("containers not a list", spec("{containers: {name: c}}", ""), "spec.containers", "expected a sequence"),
        ("container not an object", spec("{containers: [c]}", ""), "spec.containers[0]", "expected a container"),
        // A container.
        ("container name missing", spec("{containers: [{exec: /bin/true}]}", ""), "spec.containers[0].name", "missing"),
        ("container name", spec("{containers: [{name: C, exec: /bin/true}]}", ""), "spec.containers[0].name", "DNS-1123"),
        ("container name twice", spec( "{containers: [{name: c, exec: /bin/true}, {name: c, exec: /bin/true}]}", ""),
            "spec.containers[1].name",
            "duplicate container name",
        ),
        ("unknown container field", with_exec("      workdir: /\n"), "spec.containers[0].workdir", "unknown field"),
        ("image and exec", with_exec("      image: busybox\n"), "spec.containers[0].exec", "not both"),
        ("neither image nor exec", pod(""), "spec.containers[0].image", "one of `image` or `exec`"),
        ("image reference", pod("      image: \"UPPER/x:1\"\n"), "spec.containers[0].image", "not a valid image reference"),
        ("exec relative", pod("      exec: bin/true\n"), "spec.containers[0].exec", "absolute path"),
        ("exec with ..", pod("      exec: /bin/../bin/true\n"), "spec.containers[0].exec", "'..'"),
        ("exec of the wrong type", pod("      exec: 5\n"), "spec.containers[0].exec", "expected a string"),
        ("exec longer than PATH_MAX", pod(&format!("      exec: /{}\n", "a".repeat(5000))), "spec.containers[0].exec", "at most 4095"),
        ("command on a bare process", with_exec("      command: [a]\n"), "spec.containers[0].command", "not `command`"),
        ("command with NUL", pod("      image: busybox\n      command: [\"sh\", \"a\\0b\"]\n"), "spec.containers[0].command[1]", "NUL"),
        ("args with NUL", with_exec("      args: [\"a\", \"b\\0\"]\n"), "spec.containers[0].args[1]", "NUL"),
        ("args not a list", with_exec("      args: -v\n"), "spec.containers[0].args", "expected a sequence"),
        ("arg of the wrong type", with_exec("      args: [[a]]\n"), "spec.containers[0].args[0]", "expected a string"),
        ("imagePullPolicy", pod("      image: busybox\n      imagePullPolicy: Sometimes\n"), "spec.containers[0].imagePullPolicy", "unknown variant `Sometimes`, expected one of `Always`, `IfNotPresent`, `Never`"),
        ("imagePullPolicy on a bare process", with_exec("      imagePullPolicy: Always\n"), "spec.containers[0].imagePullPolicy", "only an `image` container"),
        // Its environment.
        ("env name with =", with_exec("      env: [{name: \"A=B\", value: c}]\n"), "spec.containers[0].env[0].name", "not a valid variable name"),
        ("env name empty", with_exec("      env: [{name: \"\", value: c}]\n"), "spec.containers[0].env[0].name", "not a valid variable name"),
        ("env value with NUL", with_exec("      env: [{name: A, value: \"b\\0\"}]\n"), "spec.containers[0].env[0].value", "NUL"),
        ("env value missing", with_exec("      env: [{name: A}]\n"), "spec.containers[0].env[0].value", "missing"),
        ("env unknown field", with_exec("      env: [{name: A, value: b, from: c}]\n"), "spec.containers[0].env[0].from", "unknown field"),
        ("env item not an object", with_exec("      env: [A=b]\n"), "spec.containers[0].env[0]", "expected a variable"),
        // Its ports, one alone or a list.
        ("port as a string", with_exec("      ports: {port: \"80\"}\n"), "spec.containers[0].ports[0].port", "invalid type: string \"80\", expected a port number (1-65535)"),
        ("port as a string in a list", with_exec("      ports: [{port: 80}, {port: \"81\"}]\n"), "spec.containers[0].ports[1].port", "expected a port number"),
        ("port zero", with_exec("      ports: {port: 0}\n"), "spec.containers[0].ports[0].port", "expected a port number (1-65535)"),
        ("port too large", with_exec("      ports: [{port: 70000}]\n"), "spec.containers[0].ports[0].port", "invalid value: integer `70000`"),
        ("port beyond 64 bits", with_exec("      ports: {port: 18446744073709551616}\n"), "spec.containers[0].ports[0].port", "out of range"),
        ("port type", with_exec("      ports: {port: 80, type: node-port}\n"), "spec.containers[0].ports[0].type", "not a port type"),
        ("port missing", with_exec("      ports: {target_port: 80}\n"), "spec.containers[0].ports[0].port", "missing"),
        ("target_port zero", with_exec("      ports: {port: 80, target_port: 0}\n"), "spec.containers[0].ports[0].target_port", "expected a port number"),
        ("protocol", with_exec("      ports: {port: 80, protocol: QUIC}\n"), "spec.containers[0].ports[0].protocol", "not TCP, UDP or SCTP"),
        ("protocol in a list", with_exec("      ports: [{port: 80}, {port: 81, protocol: QUIC}]\n"), "spec.containers[0].ports[1].protocol", "not TCP, UDP or SCTP"),
        ("unknown port field", with_exec("      ports: {port: 80, hostPort: 8080}\n"), "spec.containers[0].ports[0].hostPort", "unknown field"),
        ("ports neither one nor a list", with_exec("      ports: 80\n"), "spec.containers[0].ports", "expected a port ({port: 80}) or a list of them"),
        ("port exposed twice", with_exec("      ports: [{port: 80}, {port: 81}, {port: 80, target_port: 8080}]\n"), "spec.containers[0].ports[2].port", "exposed twice"),
        // Its resources.
        ("cpu", with_exec("      resources: {cpu: lots}\n"), "spec.containers[0].resources.cpu", "not a CPU quantity"),
        ("cpu out of range", with_exec("      resources: {cpu: \"0\"}\n"), "spec.containers[0].resources.cpu", "out of range"),
        ("memory", with_exec("      resources: {memory: lots}\n"), "spec.containers[0].resources.memory", "not a memory quantity"),
        ("memory too small", with_exec("      resources: {memory: \"12\"}\n"), "spec.containers[0].resources.memory", "4096 bytes"),
        ("unknown resource", with_exec("      resources: {cpus: 1}\n"), "spec.containers[0].resources.cpus", "unknown field"),
        ("resources of the wrong type", with_exec("      resources: 1\n"), "spec.containers[0].resources", "expected resource limits"),
        // Seed 004's deployment file.
        ("compact action", "name: a\nrepo: /bin/true\naction: undeploy\n".into(), "action", "expected \"deploy\""),
        ("compact version", "name: a\nrepo: /bin/true\nversion: [1]\n".into(), "version", "string or number"),
        ("compact name missing", "repo: /bin/true\n".into(), "name", "missing"),
        ("compact repo of the wrong type", "name: a\nrepo: [a]\n".into(), "repo", "expected a string"),
        ("compact unknown field", "name: a\nrepo: /bin/true\nreplicas: 2\n".into(), "replicas", "unknown field"),
        ("compact metadata", "name: a\nrepo: /bin/true\nmetadata: {labels: {}}\n".into(), "metadata.labels", "unknown field"),
        ("compact app name", "name: a\nrepo: /bin/true\nmetadata: {name: A}\n".into(), "name", "DNS-1123"),
    ]
}

#[test]
fn every_rule_names_its_field() {
    let mut wrong = Vec::new();
    for (rule, doc, field, phrase) in rules() {
        match parse(&doc) {
            Err(ManifestError::Field { field: f, reason })
                if f == field && reason.contains(phrase) => {}
            other => wrong.push(format!(
                "{rule}: expected `{field}: …{phrase}…`, got {other:?}"
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} rules broken:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// The three cases of issue 13, with the whole message.
#[test]
fn issue_13_cases_name_the_right_field() {
    let message = |doc: &str| parse(doc).unwrap_err().to_string();
    assert_eq!(
        message(&pod(&format!("{EXEC}      ports: {{port: \"80\"}}\n"))),
        "spec.containers[0].ports[0].port: invalid type: string \"80\", expected a port number (1-65535)"
    );
    assert_eq!(
        message(&spec(
            "{restartPolicy: Sometimes, containers: [{name: c, exec: /bin/true}]}",
            ""
        )),
        "spec.restartPolicy: unknown variant `Sometimes`, expected one of `Always`, `OnFailure`, `Never`"
    );
    assert_eq!(
        message(&pod(&format!(
            "{EXEC}      env: [{{name: A, value: \"b\\0\"}}]\n"
        ))),
        "spec.containers[0].env[0].value: contains a NUL byte"
    );
}

#[test]
fn syntax_and_size_are_not_field_errors() {
    let huge = format!("# {}\n", "x".repeat(MAX_MANIFEST_BYTES));
    assert!(matches!(parse(&huge), Err(ManifestError::TooLarge(_))));
    assert!(matches!(
        parse("kind: [unclosed"),
        Err(ManifestError::Syntax(_))
    ));
}
