//! Every data statement the backend sends: its CQL text, whether it is idempotent, and its
//! consistency class. All are prepared at connect; unit tests check each against
//! `schema.cql` (columns exist, the whole partition key is restricted, no ALLOW FILTERING).
//!
//! Idempotence follows one rule: lightweight transactions (`IF ...`) are not idempotent (a
//! retry after an unknown outcome could apply twice); every other statement is a pure upsert
//! or read of fixed values and is idempotent (the driver may retry it on another node).
//! Statements whose ordering matters under concurrent writers carry `USING TIMESTAMP ?`
//! with a timestamp derived from the value they write (see the store's module doc).

use scylla::client::session::Session;
use scylla::errors::PrepareError;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

use crate::schema::KEYSPACE_PLACEHOLDER;

/// How a statement's consistency is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Plain read or write: the configured consistency (default LOCAL_QUORUM).
    Plain,
    /// Lightweight transaction: Paxos at the configured serial consistency (default
    /// LOCAL_SERIAL), commit at the configured consistency.
    Lwt,
    /// Read at the serial consistency: sees every accepted Paxos proposal (used to observe
    /// LWT-written rows linearizably).
    SerialRead,
}

macro_rules! statements {
    ($( $(#[$doc:meta])* $name:ident: $class:ident, $cql:expr; )*) => {
        /// A statement of the backend; `Stmt as usize` indexes [`Prepared`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Stmt { $( $(#[$doc])* $name, )* }

        impl Stmt {
            /// Every statement, in declaration (= index) order.
            pub(crate) const ALL: &'static [Stmt] = &[$(Stmt::$name),*];

            /// CQL text with the `${keyspace}` placeholder.
            pub(crate) fn cql(self) -> &'static str {
                match self { $(Stmt::$name => $cql,)* }
            }

            /// Consistency class.
            pub(crate) fn class(self) -> Class {
                match self { $(Stmt::$name => Class::$class,)* }
            }
        }
    };
}

statements! {
    /// Writes a message row. Timestamp: server_time_ms * 1000, the same for every writer of
    /// this (seq, message), so a rewrite by a completing resend never overrides a recall.
    InsertMessage: Plain,
        "INSERT INTO ${keyspace}.messages (conversation_id, bucket, seq, message, allocated_at_ms) \
         VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?";
    /// Marks a message recalled and replaces its blob with the body-less one.
    RecallMessage: Plain,
        "UPDATE ${keyspace}.messages USING TIMESTAMP ? SET message = ?, recalled = true \
         WHERE conversation_id = ? AND bucket = ? AND seq = ?";
    /// One bucket's part of a read window.
    SelectMessages: Plain,
        "SELECT seq, message, recalled, allocated_at_ms FROM ${keyspace}.messages \
         WHERE conversation_id = ? AND bucket = ? AND seq >= ? AND seq <= ?";
    /// One message.
    SelectMessage: Plain,
        "SELECT seq, message, recalled, allocated_at_ms FROM ${keyspace}.messages \
         WHERE conversation_id = ? AND bucket = ? AND seq = ?";
    /// The allocator row (latest allocated seq).
    SelectMeta: Plain,
        "SELECT last_seq, last_alloc_ms, last_owner FROM ${keyspace}.conversation_meta \
         WHERE conversation_id = ?";
    /// The allocator row, linearizably (after an LWT with unknown outcome).
    SelectMetaSerial: SerialRead,
        "SELECT last_seq, last_alloc_ms, last_owner FROM ${keyspace}.conversation_meta \
         WHERE conversation_id = ?";
    /// Allocates seq 1... of a new conversation (expected last_seq 0: no row yet).
    InsertMeta: Lwt,
        "INSERT INTO ${keyspace}.conversation_meta \
         (conversation_id, last_seq, last_time_ms, last_alloc_ms, last_owner) VALUES (?, ?, ?, ?, ?) \
         IF NOT EXISTS";
    /// Allocates the next seq by compare-and-set on last_seq.
    CasMeta: Lwt,
        "UPDATE ${keyspace}.conversation_meta SET last_seq = ?, last_time_ms = ?, last_alloc_ms = ?, last_owner = ? \
         WHERE conversation_id = ? IF last_seq = ?";
    /// Claims (sender, client_msg_id) with seq 0 (no seq yet).
    ClaimDedupe: Lwt,
        "INSERT INTO ${keyspace}.dedupe \
         (sender_user_id, client_msg_id, conversation_id, owner, claimed_at_ms, seq, server_time_ms, request_digest) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS";
    /// Takes over an abandoned claim (no seq yet, or a seq that settled as a hole), resetting
    /// it to "claimed, no seq".
    TakeOverDedupe: Lwt,
        "UPDATE ${keyspace}.dedupe SET owner = ?, claimed_at_ms = ?, conversation_id = ?, seq = ?, request_digest = ? \
         WHERE sender_user_id = ? AND client_msg_id = ? IF owner = ? AND seq = ?";
    /// Binds the allocated seq to the claim (only while still its owner and unbound).
    BindDedupe: Lwt,
        "UPDATE ${keyspace}.dedupe SET seq = ?, server_time_ms = ?, allocated_at_ms = ? \
         WHERE sender_user_id = ? AND client_msg_id = ? IF owner = ? AND seq = ?";
    /// A claim, linearizably.
    SelectDedupeSerial: SerialRead,
        "SELECT conversation_id, owner, claimed_at_ms, seq, server_time_ms, allocated_at_ms, request_digest \
         FROM ${keyspace}.dedupe \
         WHERE sender_user_id = ? AND client_msg_id = ?";
    /// Moves a member's index entry to a seq (timestamp = seq: the highest seq wins).
    UpsertIndex: Plain,
        "UPDATE ${keyspace}.user_conversations USING TIMESTAMP ? SET last_seq = ?, last_time_ms = ? \
         WHERE user_id = ? AND conversation_id = ?";
    /// One page of a user's conversations after an id.
    ListIndex: Plain,
        "SELECT conversation_id, last_seq, last_time_ms FROM ${keyspace}.user_conversations \
         WHERE user_id = ? AND conversation_id > ? LIMIT ?";
    /// Raises the delivered watermark (timestamp = value: the highest value wins).
    SetDelivered: Plain,
        "UPDATE ${keyspace}.receipts USING TIMESTAMP ? SET delivered_seq = ? \
         WHERE conversation_id = ? AND user_id = ?";
    /// Raises the read watermark (timestamp = value: the highest value wins).
    SetRead: Plain,
        "UPDATE ${keyspace}.receipts USING TIMESTAMP ? SET read_seq = ? \
         WHERE conversation_id = ? AND user_id = ?";
    /// One member's watermarks.
    SelectReceipt: Plain,
        "SELECT delivered_seq, read_seq FROM ${keyspace}.receipts \
         WHERE conversation_id = ? AND user_id = ?";
    /// Every member's watermarks of a conversation.
    SelectReceipts: Plain,
        "SELECT user_id, delivered_seq, read_seq FROM ${keyspace}.receipts \
         WHERE conversation_id = ?";
    /// Records a setting at first start; returns the stored one when it exists.
    InsertSetting: Lwt,
        "INSERT INTO ${keyspace}.settings (setting, int_value) VALUES (?, ?) IF NOT EXISTS";
}

impl Stmt {
    /// Whether the driver may retry the statement after an unknown outcome.
    pub(crate) fn idempotent(self) -> bool {
        self.class() != Class::Lwt
    }

    /// The text for `keyspace`.
    pub(crate) fn render(self, keyspace: &str) -> String {
        self.cql().replace(KEYSPACE_PLACEHOLDER, keyspace)
    }
}

/// Every [`Stmt`], prepared, with idempotence and consistency set.
#[derive(Debug)]
pub(crate) struct Prepared {
    by_stmt: Vec<PreparedStatement>,
}

impl Prepared {
    /// Prepares every statement for `keyspace` (one round trip each, in turn).
    pub(crate) async fn prepare(
        session: &Session,
        keyspace: &str,
        serial: SerialConsistency,
        page_size: i32,
    ) -> Result<Self, (Stmt, PrepareError)> {
        let mut by_stmt = Vec::with_capacity(Stmt::ALL.len());
        for &stmt in Stmt::ALL {
            let mut p = session.prepare(stmt.render(keyspace)).await.map_err(|e| (stmt, e))?;
            p.set_is_idempotent(stmt.idempotent());
            p.set_page_size(page_size.max(1));
            if stmt.class() == Class::SerialRead {
                p.set_consistency(match serial {
                    SerialConsistency::Serial => Consistency::Serial,
                    SerialConsistency::LocalSerial => Consistency::LocalSerial,
                });
            }
            by_stmt.push(p);
        }
        Ok(Self { by_stmt })
    }

    /// The prepared form of `stmt`.
    pub(crate) fn get(&self, stmt: Stmt) -> &PreparedStatement {
        // Built from Stmt::ALL in index order, so every index is present.
        &self.by_stmt[stmt as usize]
    }
}

#[cfg(test)]
mod tests {
    //! Statement text against `schema.cql`, with a small parser of the CQL subset used.

    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::schema::{SCHEMA_CQL, split_statements};

    #[derive(Debug)]
    struct Table {
        columns: BTreeSet<String>,
        partition_key: Vec<String>,
        clustering: Vec<String>,
    }

    /// Splits at commas outside parentheses.
    fn split_top(s: &str) -> Vec<String> {
        let (mut depth, mut cur, mut out) = (0i32, String::new(), Vec::new());
        for c in s.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if c == ',' && depth == 0 {
                out.push(cur.trim().to_owned());
                cur.clear();
            } else {
                cur.push(c);
            }
        }
        if !cur.trim().is_empty() {
            out.push(cur.trim().to_owned());
        }
        out
    }

    fn list(s: &str) -> Vec<String> {
        s.split(',').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect()
    }

    fn parse_schema() -> BTreeMap<String, Table> {
        let mut tables = BTreeMap::new();
        for stmt in split_statements(SCHEMA_CQL) {
            let Some(rest) = stmt.strip_prefix("CREATE TABLE IF NOT EXISTS ${keyspace}.") else {
                continue;
            };
            let open = rest.find('(').expect("column list");
            let name = rest[..open].trim().to_owned();
            // The matching close paren of the column list.
            let mut depth = 0;
            let mut close = open;
            for (i, c) in rest.char_indices().skip(open) {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            close = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let mut columns = BTreeSet::new();
            let mut key = None;
            for item in split_top(&rest[open + 1..close]) {
                if let Some(pk) = item.strip_prefix("PRIMARY KEY") {
                    key = Some(pk.trim().to_owned());
                } else {
                    let mut words = item.split_whitespace();
                    let col = words.next().expect("column name").to_owned();
                    assert!(words.next().is_some(), "column {col} of {name} has no type");
                    columns.insert(col);
                }
            }
            let key = key.unwrap_or_else(|| panic!("{name} has no PRIMARY KEY"));
            let inner = key.strip_prefix('(').and_then(|k| k.strip_suffix(')')).expect("(...)");
            let parts = split_top(inner);
            let partition_key = match parts[0].strip_prefix('(') {
                Some(p) => list(p.strip_suffix(')').expect("((...)")),
                None => vec![parts[0].clone()],
            };
            let clustering = parts[1..].to_vec();
            for c in partition_key.iter().chain(&clustering) {
                assert!(columns.contains(c), "key column {c} of {name} is not declared");
            }
            tables.insert(name, Table { columns, partition_key, clustering });
        }
        tables
    }

    /// What a statement touches.
    #[derive(Debug, Default)]
    struct Parsed {
        kind: &'static str,
        table: String,
        /// Every column named anywhere.
        named: Vec<String>,
        /// WHERE restrictions: (column, operator).
        restrictions: Vec<(String, String)>,
        /// INSERT column list.
        inserted: Vec<String>,
        /// Number of `?` markers.
        markers: usize,
    }

    fn table_of(s: &str) -> String {
        let s = s.trim();
        let name = s.split_whitespace().next().expect("table name");
        name.strip_prefix("${keyspace}.").expect("qualified by ${keyspace}").to_owned()
    }

    fn conditions(s: &str) -> Vec<(String, String)> {
        s.split(" AND ")
            .map(|c| {
                let mut w = c.split_whitespace();
                let col = w.next().expect("column").to_owned();
                let op = w.next().expect("operator").to_owned();
                assert!(w.next().is_some(), "condition {c} has no value");
                (col, op)
            })
            .collect()
    }

    /// Splits `s` at the first ` keyword `: (before, after).
    fn cut<'a>(s: &'a str, keyword: &str) -> (&'a str, Option<&'a str>) {
        match s.find(&format!(" {keyword} ")) {
            Some(at) => (&s[..at], Some(&s[at + keyword.len() + 2..])),
            None => (s, None),
        }
    }

    fn parse_statement(cql: &str) -> Parsed {
        let cql = cql.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut p = Parsed { markers: cql.matches('?').count(), ..Parsed::default() };
        let (body, if_clause) = cut(&cql, "IF");
        if let Some(cond) = if_clause
            && cond != "NOT EXISTS"
            && cond != "EXISTS"
        {
            p.named.extend(conditions(cond).into_iter().map(|(c, _)| c));
        }
        let body = cut(body, "LIMIT").0;
        if let Some(rest) = body.strip_prefix("SELECT ") {
            p.kind = "SELECT";
            let (cols, from) = cut(rest, "FROM");
            let from = from.expect("SELECT without FROM");
            p.named.extend(list(cols));
            let (table, where_) = cut(from, "WHERE");
            p.table = table_of(table);
            p.restrictions = conditions(where_.expect("SELECT without WHERE"));
        } else if let Some(rest) = body.strip_prefix("INSERT INTO ") {
            p.kind = "INSERT";
            let open = rest.find('(').expect("column list");
            let close = rest.find(')').expect("column list end");
            p.table = table_of(&rest[..open]);
            p.inserted = list(&rest[open + 1..close]);
            p.named.extend(p.inserted.clone());
            let values = &rest[close + 1..];
            let vopen = values.find("VALUES (").expect("VALUES") + "VALUES (".len();
            let vclose = values[vopen..].find(')').expect("values end") + vopen;
            assert_eq!(list(&values[vopen..vclose]).len(), p.inserted.len(), "{cql}");
        } else if let Some(rest) = body.strip_prefix("UPDATE ") {
            p.kind = "UPDATE";
            p.table = table_of(rest);
            let (_, set) = cut(rest, "SET");
            let (assignments, where_) = cut(set.expect("UPDATE without SET"), "WHERE");
            for a in assignments.split(',') {
                let (col, _) = a.split_once('=').expect("assignment");
                p.named.push(col.trim().to_owned());
            }
            p.restrictions = conditions(where_.expect("UPDATE without WHERE"));
        } else if let Some(rest) = body.strip_prefix("DELETE ") {
            p.kind = "DELETE";
            let padded = format!(" {rest}");
            let (_, from) = cut(&padded, "FROM");
            let (table, where_) = cut(from.expect("DELETE without FROM"), "WHERE");
            p.table = table_of(table);
            p.restrictions = conditions(where_.expect("DELETE without WHERE"));
        } else {
            panic!("unsupported statement {cql}");
        }
        p.named.extend(p.restrictions.iter().map(|(c, _)| c.clone()));
        p
    }

    #[test]
    fn schema_parses_into_the_expected_keys() {
        let t = parse_schema();
        assert_eq!(t["messages"].partition_key, ["conversation_id", "bucket"]);
        assert_eq!(t["messages"].clustering, ["seq"]);
        assert_eq!(t["conversation_meta"].partition_key, ["conversation_id"]);
        assert_eq!(t["dedupe"].partition_key, ["sender_user_id", "client_msg_id"]);
        assert_eq!(t["user_conversations"].partition_key, ["user_id"]);
        assert_eq!(t["user_conversations"].clustering, ["conversation_id"]);
        assert_eq!(t["receipts"].partition_key, ["conversation_id"]);
        assert_eq!(t["receipts"].clustering, ["user_id"]);
        assert_eq!(t["group_members"].partition_key, ["conversation_id"]);
        assert!(t["messages"].columns.contains("recalled"));
        assert_eq!(t.len(), 7);
    }

    #[test]
    fn every_statement_names_only_existing_columns() {
        let tables = parse_schema();
        for &stmt in Stmt::ALL {
            let p = parse_statement(stmt.cql());
            let table = tables
                .get(&p.table)
                .unwrap_or_else(|| panic!("{stmt:?}: no table {} in schema.cql", p.table));
            for col in &p.named {
                assert!(table.columns.contains(col), "{stmt:?}: {}.{col} does not exist", p.table);
            }
            assert!(p.markers > 0, "{stmt:?}: values must be bound, not inlined");
        }
    }

    #[test]
    fn every_statement_stays_inside_one_partition() {
        let tables = parse_schema();
        for &stmt in Stmt::ALL {
            let p = parse_statement(stmt.cql());
            let table = &tables[&p.table];
            if p.kind == "INSERT" {
                for key in table.partition_key.iter().chain(&table.clustering) {
                    assert!(p.inserted.contains(key), "{stmt:?}: INSERT without key {key}");
                }
                continue;
            }
            for key in &table.partition_key {
                assert!(
                    p.restrictions.iter().any(|(c, op)| c == key && op == "="),
                    "{stmt:?}: partition key column {key} not restricted by '='"
                );
            }
            for (col, op) in &p.restrictions {
                let is_pk = table.partition_key.contains(col);
                let is_ck = table.clustering.contains(col);
                assert!(is_pk || is_ck, "{stmt:?}: WHERE on non-key column {col} (filtering)");
                if is_pk {
                    assert_eq!(op, "=", "{stmt:?}: partition key {col} restricted by {op}");
                }
            }
            if p.kind != "SELECT" {
                // Writes name the full primary key: one row each.
                for key in &table.clustering {
                    assert!(
                        p.restrictions.iter().any(|(c, op)| c == key && op == "="),
                        "{stmt:?}: write without clustering key {key}"
                    );
                }
            }
        }
    }

    #[test]
    fn no_filtering_and_multi_row_reads_are_bounded() {
        for &stmt in Stmt::ALL {
            let cql = stmt.cql().to_ascii_uppercase();
            assert!(!cql.contains("ALLOW FILTERING"), "{stmt:?}");
            assert!(!cql.contains("SELECT *"), "{stmt:?}: name the columns");
            assert!(!cql.contains("TOKEN("), "{stmt:?}: token range scan");
            assert!(!cql.contains(" IN "), "{stmt:?}: multi-partition IN");
        }
        // The reads that may return several rows: bounded by a seq range inside one bucket,
        // a LIMIT, or a partition whose size the schema bounds (a conversation's members).
        let multi: Vec<Stmt> = Stmt::ALL
            .iter()
            .copied()
            .filter(|s| {
                let p = parse_statement(s.cql());
                let tables = parse_schema();
                let t = &tables[&p.table];
                p.kind == "SELECT"
                    && !t
                        .clustering
                        .iter()
                        .all(|k| p.restrictions.iter().any(|(c, o)| c == k && o == "="))
            })
            .collect();
        assert_eq!(multi, [Stmt::SelectMessages, Stmt::ListIndex, Stmt::SelectReceipts]);
        assert!(Stmt::SelectMessages.cql().contains("seq >= ? AND seq <= ?"));
        assert!(Stmt::ListIndex.cql().ends_with("LIMIT ?"));
    }

    #[test]
    fn lwts_and_only_lwts_are_not_idempotent() {
        for &stmt in Stmt::ALL {
            let p = parse_statement(stmt.cql());
            let lwt = stmt.cql().contains(" IF ");
            assert_eq!(stmt.class() == Class::Lwt, lwt, "{stmt:?}");
            assert_eq!(stmt.idempotent(), !lwt, "{stmt:?}");
            if stmt.class() == Class::SerialRead {
                assert_eq!(p.kind, "SELECT", "{stmt:?}");
            }
            assert!(!stmt.cql().contains("COUNTER"), "counters are never idempotent");
        }
    }

    #[test]
    fn index_order_matches_all() {
        for (i, &stmt) in Stmt::ALL.iter().enumerate() {
            assert_eq!(stmt as usize, i);
        }
        let rendered = Stmt::SelectMessage.render("ks");
        assert!(rendered.contains(" FROM ks.messages WHERE "), "{rendered}");
        assert!(!rendered.contains("${"), "{rendered}");
    }

    #[test]
    fn the_parser_catches_bad_statements() {
        // The checks above must be able to fail: feed them statements they must refuse.
        let tables = parse_schema();
        let bad_column = parse_statement(
            "SELECT nope FROM ${keyspace}.messages WHERE conversation_id = ? AND bucket = ?",
        );
        assert!(!tables["messages"].columns.contains(&bad_column.named[0]));
        let scan =
            parse_statement("SELECT seq FROM ${keyspace}.messages WHERE conversation_id = ?");
        assert!(!scan.restrictions.iter().any(|(c, _)| c == "bucket"));
        let filter = parse_statement(
            "SELECT seq FROM ${keyspace}.receipts WHERE conversation_id = ? AND read_seq > ?",
        );
        assert!(!tables["receipts"].partition_key.contains(&filter.restrictions[1].0));
        assert!(!tables["receipts"].clustering.contains(&filter.restrictions[1].0));
    }
}
