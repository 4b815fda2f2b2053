//! The pod's HTTP server for `cargo xtask bench proxy`: Debian's
//! `nginx-light` with a config written here, serving one small file.

use std::path::Path;

use serde_json::{Value, json};

use super::{FILE_BYTES, HTTP_TARGET};

/// The bench's nginx: one worker, no access log, errors on stderr (the
/// pod's log), the site of [`write_site`]; a pid file per app so that
/// several can run.
pub(crate) fn nginx_container(dir: &Path, app: &str, port: u16) -> Value {
    json!({
        "name": "nginx",
        "exec": "/usr/sbin/nginx",
        "args": [
            "-c", dir.join("nginx.conf"),
            "-g", format!("pid {};", dir.join("nginx").join(format!("{app}.pid")).display()),
        ],
        "ports": {"port": port, "target_port": HTTP_TARGET, "protocol": "TCP"},
    })
}

/// The static file and nginx's config, in the cluster's temp dir. Bare
/// processes run as `run_as_user` (`nobody`), so nginx's pid files and
/// temp paths go to a sticky world-writable `nginx/` there.
pub(crate) fn write_site(dir: &Path) -> anyhow::Result<()> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    let line = "riklet proxy benchmark: a small static file served by nginx.\n";
    let body: String = line.chars().cycle().take(FILE_BYTES).collect();
    std::fs::write(www.join("index.html"), body)?;
    let run = dir.join("nginx");
    std::fs::create_dir_all(&run)?;
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
    let mut conf = String::from(
        "# Written by `cargo xtask bench proxy`.\ndaemon off;\nworker_processes 1;\n\
         events { worker_connections 4096; }\nhttp {\n  access_log off;\n",
    );
    for temp in ["client_body", "proxy", "fastcgi", "scgi", "uwsgi"] {
        conf.push_str(&format!(
            "  {temp}_temp_path {};\n",
            run.join(temp).display()
        ));
    }
    conf.push_str(&format!(
        "  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000000;\n  keepalive_timeout 65;\n\
         \x20 default_type text/html;\n  server {{\n    listen {HTTP_TARGET};\n    root {};\n  }}\n}}\n",
        www.display()
    ));
    std::fs::write(dir.join("nginx.conf"), conf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_site_is_the_announced_size() {
        let dir = std::env::temp_dir().join(format!("bench-proxy-site-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_site(&dir).unwrap();
        let body = std::fs::read(dir.join("www/index.html")).unwrap();
        let conf = std::fs::read_to_string(dir.join("nginx.conf")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(body.len(), FILE_BYTES);
        assert!(conf.contains("listen 8080;"), "{conf}");
        assert!(conf.contains("proxy_temp_path /"), "{conf}");
    }
}
