//! The fleet's table metric as the hosts export it, and the example alert rule run by
//! promtool over those very series.

use std::{path::Path, process::Command};

use xlb_lab::fleet::Fleet;

/// Each host's `xlb_vip_table_info` lines, with the scrape checked by promtool.
pub(crate) fn table_info(fleet: &Fleet) -> Vec<Vec<String>> {
    fleet
        .hosts
        .iter()
        .map(|h| {
            let scrape = h.daemon.scrape();
            let (_, body) = scrape.split_once("\r\n\r\n").expect("an HTTP response");
            xlb_lab::promtool_check_metrics(body);
            body.lines()
                .filter(|l| l.starts_with("xlb_vip_table_info{"))
                .map(String::from)
                .collect()
        })
        .collect()
}

/// The value of label `name` in an exposition line.
pub(crate) fn label<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_once(&format!("{name}=\""))
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(value, _)| value)
        .unwrap_or_else(|| panic!("no label {name} in {line}"))
}

/// `promtool test rules` of examples/prometheus/xlb-alerts.yml over `lines` (host `i`'s
/// scraped series as instance `lb<i>`), held for 11 minutes: XlbFleetTableMismatch must
/// fire for `vip`, with `tables` different tables.
pub(crate) fn mismatch_alert_fires(lines: &[Vec<String>], vip: &str, tables: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/prometheus/xlb-alerts.yml");
    let mut series = String::new();
    for (i, host) in lines.iter().enumerate() {
        for line in host {
            let (name_labels, _) = line.rsplit_once(' ').expect("a sample");
            let with_instance =
                name_labels.replacen('{', &format!("{{instance=\"lb{i}\",job=\"xlb\","), 1);
            series += &format!("      - series: '{with_instance}'\n        values: '1x12'\n");
        }
    }
    let test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}\
         \x20   alert_rule_test:\n      - eval_time: 11m\n        alertname: XlbFleetTableMismatch\n\
         \x20       exp_alerts:\n          - exp_labels: {{severity: critical, vip: {vip}}}\n\
         \x20           exp_annotations:\n              summary: \"xlb fleet: VIP {vip} has {tables} different tables across its hosts\"\n\
         \x20             description: >-\n                The hosts of VIP {vip} have differed for 10 minutes in the table\n\
         \x20               fingerprint, hash_seed or table_size of xlb_vip_table_info, so a flow\n\
         \x20               that moves between two of them changes backend. Compare\n\
         \x20               xlb_vip_table_info{{vip=\"{vip}\"}} by instance. A different hash_seed or\n\
         \x20               table_size is a config difference: apply the config repository's file to\n\
         \x20               the host that differs (both take effect when `xlb run` starts). The same\n\
         \x20               seed and size with another fingerprint is a different table: a config or\n\
         \x20               weight change not on every host, or health seen differently (`xlb status`\n\
         \x20               on each host shows which backends are down).\n",
        rules.display()
    );
    let path = dir.path().join("fleet.test.yml");
    std::fs::write(&path, &test).expect("write the rules test");
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    assert!(
        out.status.success(),
        "promtool test rules: {}{}\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
