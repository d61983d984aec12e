use super::*;

fn write(text: &str) -> (tempdir::Dir, PathBuf) {
    let dir = tempdir::Dir::new();
    let p = dir.path.join("proxy.yaml");
    std::fs::write(&p, text).unwrap();
    (dir, p)
}

/// A throwaway directory removed on drop (no extra crate for one test helper).
mod tempdir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }
    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "weft-config-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

const GOOD: &str = "identity:\n  cert: a.pem\n  key: a.key\n  bundle: ca.pem\ntunnel:\n  listen: 127.0.0.1:15008\nadmin: 127.0.0.1:15000\nhealth: 127.0.0.1:15020\noutbound:\n  - name: reviews\n    listen: 127.0.0.1:9080\n    peer: 127.0.0.1:15108\n    identity: spiffe://weft.local/ns/default/sa/reviews\n    target_port: 8080\n";

#[test]
fn good_file_resolves_relative_paths() {
    let (dir, p) = write(GOOD);
    let cfg = ProxyConfig::load(&p).unwrap();
    assert_eq!(cfg.identity.unwrap().cert, dir.path.join("a.pem"));
    assert_eq!(cfg.outbound.0.len(), 1);
    assert_eq!(cfg.outbound.0[0].target_port, Some(8080));
    assert_eq!(cfg.limits.max_headers, 100);
}

const CONTROL: &str = "control:\n  address: 127.0.0.1:15010\n  ca_bundle: mesh-ca.pem\n  state_dir: cache\nworkload:\n  name: reviews-1\n  service_account: reviews\n  address: 127.0.0.1\n  readiness: {tcp: {port: 9080}}\noutbound:\n  - listen: 127.0.0.1:9081\n    service: ratings\n    port: 9080\n";

#[test]
fn control_mode_with_service_listeners() {
    let (dir, p) = write(CONTROL);
    let cfg = ProxyConfig::load(&p).unwrap();
    let c = cfg.control.as_ref().unwrap();
    assert_eq!(c.state_dir, dir.path.join("cache"));
    assert_eq!(cfg.workload.as_ref().unwrap().namespace, "default");
    assert_eq!(
        cfg.outbound.0[0].target(),
        Ok(weft_api::Target::Service {
            namespace: "default".into(),
            name: "ratings".into(),
            port: 9080
        })
    );
}

#[test]
fn identity_sources_and_listener_targets_must_make_sense() {
    let both = format!(
        "{GOOD}{}",
        CONTROL.replace(
            "outbound:\n  - listen: 127.0.0.1:9081\n    service: ratings\n    port: 9080\n",
            ""
        )
    );
    let (_d, p) = write(&both);
    let e = ProxyConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("exclude each other"), "{e}");
    let (_d, p) = write(&CONTROL.replace("workload:", "workloads:"));
    assert!(ProxyConfig::load(&p).is_err());
    let no_workload = "control:\n  address: 127.0.0.1:15010\n  ca_bundle: ca.pem\n  state_dir: c\n";
    let (_d, p) = write(no_workload);
    let e = ProxyConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("workload"), "{e}");
    let mixed = GOOD.replace(
        "    target_port: 8080\n",
        "    target_port: 8080\n    service: x\n",
    );
    let (_d, p) = write(&mixed);
    let e = ProxyConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("outbound[0]") && e.contains("either"), "{e}");
    let service_without_control = GOOD.replace(
        "    peer: 127.0.0.1:15108\n    identity: spiffe://weft.local/ns/default/sa/reviews\n    target_port: 8080\n",
        "    service: reviews\n    port: 9080\n",
    );
    let (_d, p) = write(&service_without_control);
    let e = ProxyConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("needs `control`"), "{e}");
    let two_probes = CONTROL.replace(
        "{tcp: {port: 9080}}",
        "{tcp: {port: 9080}, http: {port: 1}}",
    );
    let (_d, p) = write(&two_probes);
    let e = ProxyConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("exactly one"), "{e}");
}

#[test]
fn bad_identity_names_line_and_field() {
    let (_d, p) = write(&GOOD.replace(
        "spiffe://weft.local/ns/default/sa/reviews",
        "spiffe://Weft/x",
    ));
    let e = ProxyConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("proxy.yaml:13"), "{e}");
    assert!(e.contains("outbound[0].identity"), "{e}");
}

#[test]
fn unknown_field_and_duplicate_listener() {
    let (_d, p) = write(&GOOD.replace(
        "    target_port: 8080\n",
        "    target_port: 8080\n    colour: red\n",
    ));
    let e = ProxyConfig::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("outbound[0].colour") && e.contains(":15:"),
        "{e}"
    );
    let dup = format!(
        "{GOOD}  - listen: 127.0.0.1:9080\n    peer: 127.0.0.1:1\n    identity: spiffe://weft.local/x\n    target_port: 1\n"
    );
    let (_d, p) = write(&dup);
    let e = ProxyConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("used by an earlier listener"), "{e}");
}

#[test]
fn port_clash_and_public_admin_refused() {
    let (_d, p) = write(&GOOD.replace("listen: 127.0.0.1:9080", "listen: 127.0.0.1:15000"));
    let e = ProxyConfig::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("outbound[0].listen") && e.contains("`admin`"),
        "{e}"
    );
    let (_d, p) = write(&GOOD.replace("admin: 127.0.0.1:15000", "admin: 0.0.0.0:15000"));
    let e = ProxyConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("loopback"), "{e}");
}

#[test]
fn admin_takes_an_address_or_a_section_and_shutdown_is_off_by_default() {
    let (_d, p) = write(GOOD);
    let c = ProxyConfig::load(&p).unwrap();
    assert_eq!(c.admin.listen, "127.0.0.1:15000".parse().unwrap());
    assert!(!c.admin.shutdown);
    let (_d, p) = write(&GOOD.replace(
        "admin: 127.0.0.1:15000",
        "admin: {listen: 127.0.0.1:15100, shutdown: true}",
    ));
    let c = ProxyConfig::load(&p).unwrap();
    assert_eq!(c.admin.listen.port(), 15100);
    assert!(c.admin.shutdown);
    let (_d, p) = write(&GOOD.replace("admin: 127.0.0.1:15000", "admin: {shutdwn: true}"));
    let e = ProxyConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("shutdwn"), "{e}");
    let (_d, p) = write(&GOOD.replace("admin: 127.0.0.1:15000", "admin: localhost"));
    let e = ProxyConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("`localhost` is not an address"), "{e}");
}

#[test]
fn dns_section_is_optional_with_defaults() {
    let (_d, p) = write(GOOD);
    assert!(ProxyConfig::load(&p).unwrap().dns.is_none());
    let (_d, p) = write(&format!("{CONTROL}dns: {{}}\n"));
    let d = ProxyConfig::load(&p).unwrap().dns.unwrap();
    assert_eq!(d.listen, "127.0.0.1:15053".parse().unwrap());
    assert_eq!(d.cluster_domain, "cluster.local");
    assert!(d.upstreams.is_empty());
    assert_eq!(d.ttl.get(), std::time::Duration::from_secs(5));
    let (_d, p) = write(&format!(
        "{CONTROL}dns:\n  listen: 127.0.0.1:5353\n  upstreams: [10.0.0.2:53, \"[fd00::2]:53\"]\n  cluster_domain: mesh.example.\n"
    ));
    let d = ProxyConfig::load(&p).unwrap().dns.unwrap();
    assert_eq!(d.upstreams.len(), 2);
}

#[test]
fn bad_dns_fields_are_named() {
    for (yaml, want) in [
        (
            "dns:\n  upstreams: [10.0.0.2]\n",
            "proxy.yaml:16:15: field `dns.upstreams[0]`",
        ),
        ("dns:\n  colour: red\n", "dns.colour"),
        ("dns:\n  upstreams: [0.0.0.0:53]\n", "dns.upstreams[0]"),
        (
            "dns:\n  listen: 127.0.0.1:5353\n  upstreams: [127.0.0.1:5353]\n",
            "own address",
        ),
        ("dns:\n  cluster_domain: bad_domain\n", "dns.cluster_domain"),
        ("dns:\n  cluster_domain: a..b\n", "dns.cluster_domain"),
        ("dns:\n  ttl: 1500ms\n", "dns.ttl"),
        ("dns:\n  max_forwards: 0\n", "dns.max_forwards"),
        ("dns:\n  tcp_idle_timeout: 0s\n", "dns.tcp_idle_timeout"),
        ("access_log:\n  sample: 2\n", "access_log.sample"),
        ("tracing:\n  collector: ftp://x/\n", "tracing.collector"),
        ("dns:\n  listen: 127.0.0.1:15000\n", "`admin`"),
    ] {
        let (_d, p) = write(&format!("{GOOD}{yaml}"));
        let e = ProxyConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains(want), "{yaml}: {e}");
    }
}

#[test]
fn missing_file_is_named() {
    let e = ProxyConfig::load(Path::new("/nonexistent/weft.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/weft.yaml"), "{e}");
}

/// The refusal of GOOD (or CONTROL) with `yaml` appended or substituted, as the operator reads it.
fn refusal(text: &str) -> String {
    let (_d, p) = write(text);
    ProxyConfig::load(&p).unwrap_err().to_string()
}

#[test]
fn validation_errors_name_the_line_and_column_of_the_field() {
    let second_listener = "  - listen: 127.0.0.1:9081\n    peer: 127.0.0.1:15108\n    identity: spiffe://weft.local/ns/default/sa/reviews\n    target_port: 0\n";
    for (text, want) in [
        (
            format!("{GOOD}limits:\n  max_connections: 5\n  max_headers: 0\n"),
            "proxy.yaml:17:3: field `limits.max_headers`: must be greater than 0",
        ),
        (
            format!("{GOOD}{second_listener}"),
            "proxy.yaml:18:5: field `outbound[1].target_port`: must be 1-65535",
        ),
        (
            GOOD.replace("listen: 127.0.0.1:9080", "listen: 127.0.0.1:15000"),
            "proxy.yaml:11:5: field `outbound[0].listen`: 127.0.0.1:15000 is already used by `admin`",
        ),
        (
            format!("{GOOD}dns:\n  upstreams:\n    - 10.0.0.2:53\n    - 0.0.0.0:53\n"),
            "proxy.yaml:18:5: field `dns.upstreams[1]`: 0.0.0.0:53 is not an address",
        ),
        (
            format!("{GOOD}tracing:\n  sample: 0.5\n  collector: ftp://x/\n"),
            "proxy.yaml:17:3: field `tracing.collector`: `ftp://x/` is not an http:// URL",
        ),
        (
            format!("{GOOD}access_log:\n  path: access.log\n\n  # a comment\n  sample: 1.5\n"),
            "proxy.yaml:19:3: field `access_log.sample`: 1.5 is not a fraction between 0 and 1",
        ),
        (
            format!("{CONTROL}interception:\n  mark: 0\n"),
            "proxy.yaml:15:3: field `interception.mark`: must be non-zero",
        ),
        (
            CONTROL.replace("{tcp: {port: 9080}}", "\n    tcp: {port: 9080}\n    http: {port: 1}"),
            "proxy.yaml:9:3: field `workload.readiness`: give exactly one of `http` and `tcp`",
        ),
        (
            CONTROL.replace("ca_bundle: mesh-ca.pem", "ca_fingerprint: sha256:zz"),
            "proxy.yaml:3:3: field `control.ca_fingerprint`: ",
        ),
        (
            format!("{CONTROL}dns:\n  ttl: 10s\n  listen: 127.0.0.1:15020\n"),
            "proxy.yaml:16:3: field `dns.listen`: 127.0.0.1:15020 is already used by `health`",
        ),
    ] {
        let e = refusal(&text);
        assert!(e.contains(want), "want {want}\n got {e}");
    }
}

#[test]
fn fields_not_written_as_blocks_resolve_to_what_is_written() {
    // A flow mapping is not followed: the section's own line.
    let e = refusal(&format!("{GOOD}limits: {{max_headers: 0}}\n"));
    assert!(
        e.contains("proxy.yaml:15:1: field `limits.max_headers`"),
        "{e}"
    );
    let e = refusal(&GOOD.replace("admin: 127.0.0.1:15000", "admin: {listen: 0.0.0.0:15000}"));
    assert!(e.contains("proxy.yaml:7:1: field `admin`: "), "{e}");
    // A section the file leaves out: where the document starts, after comments and a marker.
    let no_workload =
        "# a proxy\n\ncontrol:\n  address: 127.0.0.1:15010\n  ca_bundle: ca.pem\n  state_dir: c\n";
    let e = refusal(no_workload);
    assert!(e.contains("proxy.yaml:3:1: field `workload`"), "{e}");
    let e = refusal(&format!("---\n{GOOD}limits:\n  max_headers: 0\n"));
    assert!(
        e.contains("proxy.yaml:17:3: field `limits.max_headers`"),
        "{e}"
    );
}

#[test]
fn a_config_over_the_yaml_limits_is_refused_before_parsing() {
    let deep = format!("{GOOD}extra: {}1{}\n", "[".repeat(80), "]".repeat(80));
    let line = GOOD.lines().count() + 1;
    let (_d, p) = write(&deep);
    let e = ProxyConfig::load(&p).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "proxy.yaml:{line}:71: nesting deeper than 64 levels"
        )),
        "{e}"
    );
    let (_d, p) = write(&format!("{GOOD}extra: *alias\n"));
    let e = ProxyConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("anchors and aliases"), "{e}");
}

#[test]
fn control_address_takes_one_a_list_or_names_and_refuses_naming_the_entry() {
    for (address, entries) in [
        ("127.0.0.1:15010", 1),
        ("[127.0.0.1:15010, 127.0.0.2:15010]", 2),
        ("\n    - control.weft.test:15010\n    - 127.0.0.2:15010", 2),
    ] {
        let (_d, p) = write(&CONTROL.replace("127.0.0.1:15010", address));
        let cfg = ProxyConfig::load(&p).unwrap();
        let c = cfg.control.unwrap();
        assert_eq!(c.address.parse().unwrap().len(), entries, "{address}");
    }
    for (address, want) in [
        (
            "[127.0.0.1:15010, nope]",
            "proxy.yaml:2:3: field `control.address[1]`: `nope` is not IP:PORT or HOST:PORT",
        ),
        (
            "[]",
            "proxy.yaml:2:3: field `control.address`: names no control plane",
        ),
        (
            "127.0.0.1",
            "field `control.address`: `127.0.0.1` is not IP:PORT",
        ),
        ("{a: 1}", "expected IP:PORT, HOST:PORT or a list of them"),
    ] {
        let e = refusal(&CONTROL.replace("127.0.0.1:15010", address));
        assert!(e.contains(want), "want {want}\n got {e}");
    }
}
