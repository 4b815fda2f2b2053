//! Parsing and validation of both forms, through [`super::parse`].

use super::*;

fn field_of(r: Result<AppManifest, ManifestError>) -> String {
    match r {
        Err(ManifestError::Field { field, .. }) => field,
        other => panic!("expected a field error, got {other:?}"),
    }
}

const PROCESS: &str = r#"
apiVersion: v1
kind: Pod
name: web
replicas: 2
spec:
  restartPolicy: OnFailure
  containers:
    - name: httpd
      exec: /bin/busybox
      args: ["httpd", "-f", "-p", "8080"]
      env: [{name: A, value: b}]
      ports: {port: 80, target_port: 8080, protocol: TCP}
      resources: {cpu: "500m", memory: "64Mi"}
"#;

#[test]
fn parses_process_workload() {
    let m = parse(PROCESS).unwrap();
    assert_eq!(m.name, "web");
    assert_eq!(m.replicas, 2);
    assert_eq!(m.spec.restart_policy, RestartPolicy::OnFailure);
    let c = &m.spec.containers[0];
    assert_eq!(c.exec.as_deref(), Some("/bin/busybox"));
    assert_eq!(c.ports[0].target_port, 8080);
    let r = c.resources.as_ref().unwrap();
    assert_eq!(r.cpu_millis(), Some(500));
    assert_eq!(r.memory_bytes(), Some(64 << 20));
    // The definition round-trips through the wire form.
    assert_eq!(parse_definition(&m.to_definition()).unwrap(), m);
}

#[test]
fn parses_rik_controller_definition_with_nulls() {
    let def = r#"{"apiVersion":"v1","kind":"Pod","name":"alpine","spec":{"containers":[{"name":"alpine","image":"alpine:latest","env":null,"ports":null}],"function":null},"replicas":1}"#;
    let m = parse_definition(def).unwrap();
    assert_eq!(m.spec.containers[0].image.as_deref(), Some("alpine:latest"));
    assert!(m.spec.containers[0].env.is_empty());
    let d = m.deployment();
    assert_eq!(
        (d.repository.as_str(), d.version.as_str()),
        ("alpine", "latest")
    );
}

#[test]
fn parses_compact_deployment_file() {
    let m = parse("name: nginx\nrepo: https://example.com/nginx\nversion: 1.19.1\naction: deploy\nmetadata:\n  name: app1\n").unwrap();
    assert_eq!(m.name, "app1");
    assert_eq!(
        m.spec.containers[0].image.as_deref(),
        Some("example.com/nginx:1.19.1")
    );
    let m = parse("name: hello\nrepo: /bin/true\nversion: 1\naction: deploy\n").unwrap();
    assert_eq!(m.spec.containers[0].exec.as_deref(), Some("/bin/true"));
    assert_eq!(m.deployment().version, "1");
}

fn with_container(extra: &str) -> String {
    format!("kind: Pod\nname: app\nspec:\n  containers:\n    - name: c\n{extra}")
}

/// The other rules are in the table of `errors`.
#[test]
fn rejects_bad_app_names() {
    for bad in ["a/b", "..", "Upper", &"a".repeat(64), "-x", ""] {
        let doc = format!(
            "kind: Pod\nname: {bad:?}\nspec:\n  containers:\n    - {{name: c, exec: /bin/true}}\n"
        );
        assert_eq!(field_of(parse(&doc)), "name", "name {bad:?}");
    }
}

#[test]
fn instance_ids_and_node_names() {
    assert!(validate_instance_id("opposite-join-5857").is_ok());
    assert!(validate_instance_id(&format!("{}-abcde", "a".repeat(63))).is_ok());
    for bad in ["../../etc", "a/b", "A", "", "-a"] {
        assert!(validate_instance_id(bad).is_err(), "{bad}");
    }
    assert!(validate_node_name("node", "node-1.example.com").is_ok());
    for bad in ["node..x", "Node", ".x", "a_b"] {
        assert!(validate_node_name("node", bad).is_err(), "{bad}");
    }
}

#[test]
fn host_network_and_pull_policy_round_trip() {
    let m = parse(
        "kind: Pod\nname: web\nspec:\n  hostNetwork: true\n  containers:\n    \
             - {name: a, image: \"127.0.0.1:5000/busybox:1\", imagePullPolicy: Always}\n    \
             - {name: b, image: busybox}\n",
    )
    .unwrap();
    assert!(m.spec.host_network);
    assert_eq!(m.spec.containers[0].pull_policy(), ImagePullPolicy::Always);
    assert_eq!(m.spec.containers[1].image_pull_policy, None);
    assert_eq!(
        m.spec.containers[1].pull_policy(),
        ImagePullPolicy::IfNotPresent
    );
    let def = m.to_definition();
    assert!(def.contains(r#""hostNetwork":true"#), "{def}");
    assert!(def.contains(r#""imagePullPolicy":"Always""#), "{def}");
    assert_eq!(parse_definition(&def).unwrap(), m);
    // Defaults: a pod network of its own, nothing extra on the wire.
    let m = parse("kind: Pod\nname: web\nspec: {containers: [{name: a, image: busybox}]}").unwrap();
    assert!(!m.spec.host_network);
    let def = m.to_definition();
    assert!(
        !def.contains("hostNetwork") && !def.contains("imagePullPolicy"),
        "{def}"
    );
    assert_eq!(parse_definition(&def).unwrap(), m);
    // RIK's own definitions (null everywhere) still parse.
    let m = parse_definition(
            r#"{"apiVersion":"v1","kind":"Pod","name":"a","spec":{"containers":[{"name":"a","image":"alpine:latest","imagePullPolicy":null}],"hostNetwork":null,"function":null},"replicas":1}"#,
        )
        .unwrap();
    assert!(!m.spec.host_network);
}

#[test]
fn log_limits_round_trip() {
    let m = parse(
        "kind: Pod\nname: web\nspec:\n  logs: {maxSize: 1Mi, maxFiles: 3}\n  containers:\n    \
             - {name: a, exec: /bin/true}\n",
    )
    .unwrap();
    let logs = m.spec.logs.clone().unwrap();
    assert_eq!(logs.max_size_bytes(), Some(1 << 20));
    assert_eq!(logs.max_files, Some(3));
    let def = m.to_definition();
    assert!(
        def.contains(r#""logs":{"maxSize":"1Mi","maxFiles":3}"#),
        "{def}"
    );
    assert_eq!(parse_definition(&def).unwrap(), m);
    // Either limit alone; none at all leaves nothing on the wire.
    let m = parse("kind: Pod\nname: web\nspec: {logs: {maxFiles: 1}, containers: [{name: a, exec: /bin/true}]}").unwrap();
    assert_eq!(m.spec.logs.as_ref().unwrap().max_size_bytes(), None);
    let m =
        parse("kind: Pod\nname: web\nspec: {containers: [{name: a, exec: /bin/true}]}").unwrap();
    assert_eq!(m.spec.logs, None);
    assert!(!m.to_definition().contains("logs"));
}

#[test]
fn image_references_follow_the_distribution_grammar() {
    for good in [
        "busybox",
        "busybox:1.36",
        "library/busybox:latest",
        "docker.io/library/busybox:1",
        "127.0.0.1:5000/busybox:1",
        "localhost/a/b-c__d.e:1",
        "registry.example.com:443/team/app:v1.2.3-rc_1",
        "[::1]:5000/busybox:1",
        &format!("busybox@sha256:{}", "a".repeat(64)),
        &format!("127.0.0.1:5000/busybox:1@sha256:{}", "0".repeat(64)),
    ] {
        assert_eq!(check_image_reference(good), Ok(()), "{good}");
    }
    for bad in [
        "",
        "Not A Reference",
        "busybox:",
        "UPPER/x:1",
        "127.0.0.1:9/UPPER/case:1",
        "127.0.0.1:9/a@sha256:zz",
        "127.0.0.1:9/busybox::1",
        "127.0.0.1:9/a/-b:1",
        "a/b._c",
        "a/b___c",
        "a/b_",
        "busybox:-x",
        "bad_host:5000/x:1",
        "127.0.0.1:99999999/x",
        "/busybox",
        "busybox@md5",
        &format!("busybox:{}", "t".repeat(129)),
        &format!("a/{}", "b".repeat(255)),
    ] {
        let err = check_image_reference(bad);
        assert!(err.is_err(), "{bad:?} accepted");
        let doc = with_container(&format!("      image: {bad:?}\n"));
        assert_eq!(field_of(parse(&doc)), "spec.containers[0].image", "{bad:?}");
    }
}

#[test]
fn quantities() {
    assert_eq!(parse_cpu("2"), Ok(2000));
    assert_eq!(parse_cpu("0.25"), Ok(250));
    assert!(parse_cpu("0").is_err());
    assert!(parse_cpu("-1").is_err());
    assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
    assert_eq!(parse_memory("100M"), Ok(100_000_000));
    assert!(parse_memory("12").is_err());
    assert_eq!(parse_size("12"), Ok(12));
    assert_eq!(parse_size("64Ki"), Ok(65536));
    for bad in ["", "Mi", "1.5Mi", "-1", "99999999999Ti"] {
        assert_eq!(
            parse_size(bad),
            Err(QuantityError::NotSize(bad.into())),
            "{bad}"
        );
    }
}

mod errors;
mod hostile;
