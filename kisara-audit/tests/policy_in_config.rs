//! The `[policy]` table lives in the server's config file: the file still
//! loads as a Kisara config, and `RulePolicy` reads the same file.

use kisara_audit::RulePolicy;
use kisara_core::config::Config;

#[test]
fn one_file_holds_the_server_config_and_its_policy() {
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/kisara.toml");
    let text = std::fs::read_to_string(sample).unwrap();
    // The sample names the policy commented out: switch it on.
    let policy_starts = text
        .find("#[policy]")
        .expect("the sample shows a [policy] table");
    let (before, after) = text.split_at(policy_starts);
    let table_end = after.find("\n\n").unwrap();
    let uncommented: String = after[..table_end]
        .lines()
        .map(|line| line.strip_prefix('#').unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n");
    let text = format!("{before}{uncommented}{}", &after[table_end..]);

    let config = Config::from_toml_str(&text, "kisara.toml").unwrap();
    assert_eq!(config.policy["default"].as_str(), Some("deny"));
    RulePolicy::from_toml_str(&text, "kisara.toml").unwrap();

    let broken = text.replace("\"/srv/challenge/**\"", "\"[ab\"");
    Config::from_toml_str(&broken, "kisara.toml").expect("the config loads");
    let err = RulePolicy::from_toml_str(&broken, "kisara.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("players-read-the-challenge") && err.contains("[ab"),
        "{err}"
    );
}
