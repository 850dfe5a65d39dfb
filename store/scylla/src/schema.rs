//! The CQL schema (`schema.cql`, compiled in) and its rendering for one keyspace.
//!
//! `schema.cql` holds `${keyspace}` and `${replication}` placeholders; [`render`] fills them
//! from the (validated) config and splits the file into statements, each idempotent
//! (`CREATE ... IF NOT EXISTS`). DDL is sent unprepared (it cannot usefully be prepared);
//! every data statement is prepared (see `statements.rs`).

/// The schema file, as shipped in the repository.
pub const SCHEMA_CQL: &str = include_str!("../schema.cql");

/// Placeholder for the keyspace name in `schema.cql` and in statement text.
pub const KEYSPACE_PLACEHOLDER: &str = "${keyspace}";
/// Placeholder for the replication map in `schema.cql`.
pub const REPLICATION_PLACEHOLDER: &str = "${replication}";

/// Removes `--` comments (to the end of the line). The schema has no string literal
/// containing `--`.
pub(crate) fn strip_comments(cql: &str) -> String {
    cql.lines()
        .map(|line| line.find("--").map_or(line, |at| &line[..at]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The statements of `cql` (comments removed, split at `;`, whitespace collapsed).
pub(crate) fn split_statements(cql: &str) -> Vec<String> {
    strip_comments(cql)
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

/// The schema's statements for `keyspace` with `replication`, in file order (keyspace
/// first). Both values must have passed [`crate::ScyllaConfig::validate`].
pub fn render(keyspace: &str, replication: &str) -> Vec<String> {
    split_statements(SCHEMA_CQL)
        .into_iter()
        .map(|s| {
            s.replace(KEYSPACE_PLACEHOLDER, keyspace).replace(REPLICATION_PLACEHOLDER, replication)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_REPLICATION;

    #[test]
    fn renders_keyspace_then_idempotent_tables() {
        let stmts = render("tern_test", DEFAULT_REPLICATION);
        assert_eq!(
            stmts[0],
            format!(
                "CREATE KEYSPACE IF NOT EXISTS tern_test WITH replication = {DEFAULT_REPLICATION} \
                 AND durable_writes = true"
            )
        );
        let tables: Vec<&str> = stmts[1..]
            .iter()
            .map(|s| {
                let rest = s
                    .strip_prefix("CREATE TABLE IF NOT EXISTS tern_test.")
                    .unwrap_or_else(|| panic!("not an idempotent CREATE TABLE in tern_test: {s}"));
                rest.split(' ').next().unwrap_or_default()
            })
            .collect();
        assert_eq!(
            tables,
            [
                "messages",
                "conversation_meta",
                "dedupe",
                "user_conversations",
                "conversation_mutes",
                "receipts",
                "group_members",
                "group_current",
                "settings",
                "devices"
            ]
        );
        for s in &stmts {
            assert!(!s.contains("${"), "unfilled placeholder in {s}");
            assert!(!s.contains("--"), "comment left in {s}");
        }
    }

    #[test]
    fn every_table_is_documented_by_a_comment() {
        let lines: Vec<&str> = SCHEMA_CQL.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.starts_with("CREATE TABLE") {
                assert!(
                    i > 0 && lines[i - 1].starts_with("-- "),
                    "table at line {} has no comment above it",
                    i + 1
                );
                let comment: String = lines[..i]
                    .iter()
                    .rev()
                    .take_while(|l| l.starts_with("--"))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ");
                assert!(
                    comment.contains("partition") || comment.contains("Partition"),
                    "the comment of the table at line {} does not state its partition bound",
                    i + 1
                );
            }
        }
    }

    #[test]
    fn comments_are_stripped_but_text_kept() {
        assert_eq!(
            split_statements("-- a\nSELECT a -- b\nFROM t;\n\n;  -- c\n INSERT x ;"),
            vec!["SELECT a FROM t".to_owned(), "INSERT x".to_owned()]
        );
    }
}
