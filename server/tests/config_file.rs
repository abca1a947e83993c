//! Config file integration tests through the public API: the shipped example, the effective
//! config a `percore config print` shows, and command-line style overrides.

use std::path::Path;

use percore_server::config_file::{Config, builtin_routes};

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/percore.example.toml")
}

#[test]
fn the_shipped_example_validates_and_documents_every_field() {
    let text = std::fs::read_to_string(example()).expect("example exists");
    let c = Config::parse(&text, "percore.example.toml").unwrap_or_else(|e| panic!("{e}"));
    c.validate().expect("still valid without a document");
    // Every key the printer writes appears in the example (as a setting or a comment).
    let printed = Config::default().effective().to_toml();
    for line in printed.lines() {
        let line = line.trim_start_matches("# ");
        if let Some((key, _)) = line.split_once(" = ") {
            assert!(
                text.contains(&format!("{key} = ")) || text.contains(&format!("{key}  ")),
                "the example does not mention {key:?}"
            );
        }
    }
    for kind in ["access_log", "request_id", "rate_limit", "auth", "headers"] {
        assert!(text.contains(&format!("kind = \"{kind}\"")), "{kind}");
    }
}

#[test]
fn effective_config_prints_builtin_routes_and_reads_back() {
    let c = Config::parse("[server]\nshards = 2\n", "f.toml").unwrap();
    let eff = c.effective();
    assert_eq!(eff.routes, builtin_routes());
    let printed = eff.to_toml();
    assert!(printed.contains("path = \"/kv/{key}\""), "{printed}");
    assert_eq!(Config::parse(&printed, "printed").unwrap(), eff);
}

#[test]
fn overrides_are_revalidated() {
    let mut c = Config::parse("[server]\nshards = 2\n", "f.toml").unwrap();
    // `--cpus` replaces `shards`: the caller must clear the other one.
    c.server.cpus = Some("0".into());
    assert_eq!(c.validate().unwrap_err().field, "server.shards");
    c.server.shards = None;
    c.validate().unwrap();
    // `--admin` on a public address is refused.
    c.admin.listen = c.server.listen[0];
    let e = c.validate().unwrap_err();
    assert_eq!(e.field, "admin.listen");
    assert!(!e.to_string().contains('\n'));
}
