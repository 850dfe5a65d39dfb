//! Misspelled environment variables: every `TERN_*` variable that names no configuration key
//! (and is none of the few other variables Tern reads) gets one warning line at start, naming
//! the closest known variable, instead of being silently ignored.

use crate::config::Config;

/// `TERN_*` environment variables read outside the configuration keys (by flags, tools, tests
/// and the Scylla backend); the warning about unknown variables leaves them alone.
pub const OTHER_ENV_VARS: &[&str] = &[
    "TERN_CONFIG",
    "TERN_TOKEN",
    "TERN_LOADTEST_KEY",
    "TERN_TESTKIT_ECHO",
    "TERN_REDIS_SERVER",
    "TERN_TUNING_PROC_SYS",
    "TERN_WRITE_CORPUS",
    tern_store_scylla::config::ENV_NODES,
    tern_store_scylla::config::ENV_KEYSPACE,
    tern_store_scylla::config::ENV_REPLICATION,
    tern_store_scylla::config::ENV_LOCAL_DC,
    tern_store_scylla::config::ENV_CONSISTENCY,
    tern_store_scylla::config::ENV_SERIAL_CONSISTENCY,
    tern_store_scylla::config::ENV_REQUEST_TIMEOUT_MS,
    tern_store_scylla::config::ENV_BUCKET_SIZE,
];

/// One warning line for each `TERN_*` variable in `env` that Tern does not read (a misspelled
/// key is otherwise silently ignored), naming the closest known variable when one is close.
pub fn unknown_env_warnings(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let Ok(table) = toml::Table::try_from(Config::default()) else { return Vec::new() };
    let mut known: Vec<String> = OTHER_ENV_VARS.iter().map(|s| (*s).to_owned()).collect();
    for (section, keys) in &table {
        for key in keys.as_table().into_iter().flat_map(|t| t.keys()) {
            known.push(format!("TERN_{section}_{key}").to_ascii_uppercase());
        }
    }
    let mut out = Vec::new();
    for (name, _) in env {
        let Some(rest) = name.strip_prefix("TERN_") else { continue };
        let upper = name.to_ascii_uppercase();
        if known.contains(&upper) {
            continue;
        }
        let rest = rest.to_ascii_uppercase();
        // The closest by edit distance, else one that ends with what was given (a missing
        // section: TERN_IDLE_TIMEOUT for TERN_GATEWAY_IDLE_TIMEOUT).
        let closest = known
            .iter()
            .map(|k| (strsim::damerau_levenshtein(&upper, k), k))
            .filter(|(d, _)| *d <= 3.max(upper.len() / 8))
            .min()
            .map(|(_, k)| k)
            .or_else(|| known.iter().find(|k| k.ends_with(&format!("_{rest}"))));
        out.push(match closest {
            Some(k) => format!("unknown environment variable {name} is ignored; did you mean {k}?"),
            None => format!(
                "unknown environment variable {name} is ignored (configuration variables are \
                 TERN_<SECTION>_<KEY>, see etc/tern.toml)"
            ),
        });
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tern_variables_are_named_with_the_closest_known_one() {
        let env = |names: &[&str]| -> Vec<(String, String)> {
            names.iter().map(|n| (n.to_string(), "x".to_string())).collect()
        };
        let warnings = unknown_env_warnings(env(&[
            "TERN_GATEWAY_IDLE_TIMOUT",
            "TERN_IDLE_TIMEOUT",
            "TERN_SERVER_LISTEN",
            "TERN_server_log",
            "TERN_TOKEN",
            "TERN_SCYLLA_NODES",
            "TERNARY",
            "PATH",
            "TERN_WHATEVER_THIS_IS",
        ]));
        assert_eq!(
            warnings,
            [
                "unknown environment variable TERN_GATEWAY_IDLE_TIMOUT is ignored; did you mean \
                 TERN_GATEWAY_IDLE_TIMEOUT?",
                "unknown environment variable TERN_IDLE_TIMEOUT is ignored; did you mean \
                 TERN_GATEWAY_IDLE_TIMEOUT?",
                "unknown environment variable TERN_WHATEVER_THIS_IS is ignored (configuration \
                 variables are TERN_<SECTION>_<KEY>, see etc/tern.toml)",
            ]
        );
    }
}
