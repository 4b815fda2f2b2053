use std::path::Path;
use std::time::Duration;
use riklet::runtime::containerd::ContainerdRuntime;

#[tokio::test]
async fn scratch() {
    let rt = ContainerdRuntime::connect(Path::new("/tmp/cdx/c.sock"), "rik").await.unwrap();
    println!("list 1: {:?}", rt.list().await.map(|l| l.len()));
    let rt2 = rt.clone();
    let w = tokio::spawn(async move { rt2.wait("nope_x").await });
    println!("wait nonexistent: {:?}", w.await.unwrap().err());
    std::process::Command::new("sh").args(["-c", "kill $(pgrep -f 'containerd --config /tmp/cdx/config.toml')"]).status().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        println!("list while down {i}: {:?}", rt.list().await.map(|l| l.len()).err().map(|e| e.to_string()));
    }
    std::process::Command::new("sh").args(["-c", "cd /tmp/cdx && (containerd --config /tmp/cdx/config.toml > /tmp/cdx/log 2>&1 &)"]).status().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..3 {
        println!("list after restart {i}: {:?}", rt.list().await.map(|l| l.len()).map_err(|e| e.to_string()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
