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
    assert_eq!(t["group_members"].clustering, ["user_id"]);
    assert_eq!(t["group_current"].partition_key, ["conversation_id"]);
    assert_eq!(t["group_current"].clustering, ["user_id"]);
    assert!(t["messages"].columns.contains("recalled"));
    for c in ["group_version", "group_dissolved", "group_record", "group_pending", "change_fence"] {
        assert!(t["conversation_meta"].columns.contains(c), "conversation_meta.{c}");
    }
    assert!(t["dedupe"].columns.contains("group_version"));
    for c in ["mention_seq", "muted", "pinned"] {
        assert!(t["user_conversations"].columns.contains(c), "user_conversations.{c}");
    }
    assert!(t["conversation_meta"].columns.contains("mention_all_seq"));
    assert_eq!(t["devices"].partition_key, ["user_id"]);
    assert_eq!(t["devices"].clustering, ["device_id"]);
    for c in ["platform", "last_seen_ms", "revoked_before_ms", "push"] {
        assert!(t["devices"].columns.contains(c), "devices.{c}");
    }
    assert_eq!(t["conversation_mutes"].partition_key, ["conversation_id"]);
    assert_eq!(t["conversation_mutes"].clustering, ["user_id"]);
    assert!(t["conversation_mutes"].columns.contains("muted"));
    assert_eq!(t.len(), 10);
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
    // a LIMIT, or a partition whose size the schema bounds (a conversation's members, the
    // users who ever muted a conversation, a user's devices).
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
    assert_eq!(
        multi,
        [
            Stmt::SelectMessages,
            Stmt::SelectMutes,
            Stmt::ListIndex,
            Stmt::SelectReceipts,
            Stmt::ListCurrent,
            Stmt::SelectDevices
        ]
    );
    assert!(Stmt::SelectMessages.cql().contains("seq >= ? AND seq <= ?"));
    assert!(Stmt::ListIndex.cql().ends_with("LIMIT ?"));
    assert!(Stmt::ListCurrent.cql().ends_with("user_id > ? LIMIT ?"));
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
    let scan = parse_statement("SELECT seq FROM ${keyspace}.messages WHERE conversation_id = ?");
    assert!(!scan.restrictions.iter().any(|(c, _)| c == "bucket"));
    let filter = parse_statement(
        "SELECT seq FROM ${keyspace}.receipts WHERE conversation_id = ? AND read_seq > ?",
    );
    assert!(!tables["receipts"].partition_key.contains(&filter.restrictions[1].0));
    assert!(!tables["receipts"].clustering.contains(&filter.restrictions[1].0));
}

/// The (condition) columns of an `IF` clause, `[]` for `IF NOT EXISTS`.
fn condition_columns(cql: &str) -> Vec<String> {
    let cql = cql.split_whitespace().collect::<Vec<_>>().join(" ");
    match cut(&cql, "IF").1 {
        None | Some("NOT EXISTS") | Some("EXISTS") => Vec::new(),
        Some(cond) => conditions(cond).into_iter().map(|(c, _)| c).collect(),
    }
}

#[test]
fn allocator_and_dedupe_rows_are_written_only_by_lwts() {
    for &stmt in Stmt::ALL {
        let p = parse_statement(stmt.cql());
        if (p.table == "conversation_meta" || p.table == "dedupe") && p.kind != "SELECT" {
            assert_eq!(stmt.class(), Class::Lwt, "{stmt:?} writes {} without Paxos", p.table);
        }
    }
}

#[test]
fn group_allocations_compare_the_version() {
    // A send is sequenced at the version its sender was checked at; a change also at the
    // fence (so a takeover can stop it); a clear only while the change is the latest.
    assert_eq!(condition_columns(Stmt::CasGroupSend.cql()), ["last_seq", "group_version"]);
    assert_eq!(
        condition_columns(Stmt::CasGroupSendMentionAll.cql()),
        ["last_seq", "group_version"]
    );
    assert_eq!(
        condition_columns(Stmt::CasGroupChange.cql()),
        ["last_seq", "group_version", "change_fence"]
    );
    assert_eq!(condition_columns(Stmt::ClearPending.cql()), ["group_version"]);
    assert_eq!(condition_columns(Stmt::CasFence.cql()), ["change_fence"]);
    assert_eq!(condition_columns(Stmt::BindGroupEvent.cql()), ["seq"]);
    assert_eq!(condition_columns(Stmt::ReleaseDedupe.cql()), ["owner", "seq"]);
    assert_eq!(condition_columns(Stmt::BindDedupe.cql()), ["owner", "seq"]);
    for stmt in [Stmt::InsertGroup, Stmt::InsertFence, Stmt::InsertMeta, Stmt::ClaimDedupe] {
        assert!(stmt.cql().ends_with("IF NOT EXISTS"), "{stmt:?}");
    }
    // A change moves the version with the seq, and stores its record and completion with it.
    let p = parse_statement(Stmt::CasGroupChange.cql());
    for col in ["last_seq", "group_version", "group_record", "group_pending", "group_dissolved"] {
        assert!(p.named.iter().any(|c| c == col), "CasGroupChange does not set {col}");
    }
    let send = parse_statement(Stmt::CasGroupSend.cql());
    assert!(!send.named.iter().any(|c| c == "group_pending" || c == "change_fence"));
}

#[test]
fn lwt_results_are_read_only_for_columns_they_return() {
    // A not-applied conditional UPDATE returns (at least: Cassandra) the condition columns;
    // an INSERT IF NOT EXISTS the whole row. These are the columns the code reads.
    let read: &[(Stmt, &[&str])] = &[
        (Stmt::CasMeta, &["last_seq"]),
        (Stmt::CasGroupSend, &["last_seq", "group_version"]),
        (Stmt::CasGroupSendMentionAll, &["last_seq", "group_version"]),
        (Stmt::CasFence, &["change_fence"]),
        (Stmt::BindGroupEvent, &["seq"]),
    ];
    for (stmt, columns) in read {
        let returned = condition_columns(stmt.cql());
        for c in *columns {
            assert!(returned.iter().any(|r| r == c), "{stmt:?} does not return {c}");
        }
    }
}

#[test]
fn plain_writes_of_rows_several_writers_touch_carry_a_timestamp() {
    for stmt in [
        Stmt::InsertMessage,
        Stmt::RecallMessage,
        Stmt::UpsertIndex,
        Stmt::UpsertIndexMention,
        Stmt::UpsertMention,
        Stmt::SetFlags,
        Stmt::SetMute,
        Stmt::SetDelivered,
        Stmt::SetRead,
        Stmt::UpsertMember,
        Stmt::UpsertCurrent,
        Stmt::DeleteCurrent,
    ] {
        assert!(stmt.cql().contains("USING TIMESTAMP ?"), "{stmt:?}");
        assert!(matches!(stmt.class(), Class::Plain | Class::Membership), "{stmt:?}");
        assert!(stmt.idempotent(), "{stmt:?}");
    }
    // The current-member table holds exactly the member table's current columns.
    let tables = parse_schema();
    let mut current = tables["group_current"].columns.clone();
    current.insert("removed_seq".into());
    assert_eq!(current, tables["group_members"].columns);
}

#[test]
fn markers_match_the_values_the_code_binds() {
    // The length of the value tuple each call site binds (append/, group/, store.rs, ...).
    let bound: &[(Stmt, usize)] = &[
        (Stmt::InsertMessage, 6),
        (Stmt::RecallMessage, 5),
        (Stmt::SelectMessages, 4),
        (Stmt::SelectMessage, 3),
        (Stmt::SelectMeta, 1),
        (Stmt::SelectMetaSerial, 1),
        (Stmt::InsertMeta, 5),
        (Stmt::CasMeta, 6),
        (Stmt::ClaimDedupe, 8),
        (Stmt::TakeOverDedupe, 9),
        (Stmt::BindDedupe, 8),
        (Stmt::SelectDedupeSerial, 2),
        (Stmt::ReleaseDedupe, 4),
        (Stmt::BindGroupEvent, 9),
        (Stmt::UpsertIndex, 5),
        (Stmt::UpsertIndexMention, 6),
        (Stmt::UpsertMention, 4),
        (Stmt::SetFlags, 5),
        (Stmt::SetMute, 4),
        (Stmt::SelectMutes, 1),
        (Stmt::ListIndex, 3),
        (Stmt::SetDelivered, 4),
        (Stmt::SetRead, 4),
        (Stmt::SelectReceipt, 2),
        (Stmt::SelectReceipts, 1),
        (Stmt::SelectGroup, 1),
        (Stmt::SelectGroupSerial, 1),
        (Stmt::CasGroupSend, 7),
        (Stmt::CasGroupSendMentionAll, 8),
        (Stmt::InsertGroup, 10),
        (Stmt::CasGroupChange, 12),
        (Stmt::ClearPending, 3),
        (Stmt::InsertFence, 4),
        (Stmt::CasFence, 3),
        (Stmt::UpsertMember, 7),
        (Stmt::SelectMember, 2),
        (Stmt::UpsertCurrent, 6),
        (Stmt::DeleteCurrent, 3),
        (Stmt::ListCurrent, 3),
        (Stmt::InsertSetting, 2),
        (Stmt::CheckInDevice, 5),
        (Stmt::SetDevicePush, 4),
        (Stmt::ClearDevicePush, 3),
        (Stmt::FenceDevice, 4),
        (Stmt::SelectDevice, 2),
        (Stmt::SelectDevices, 1),
    ];
    assert_eq!(bound.len(), Stmt::ALL.len(), "every statement is listed");
    for &(stmt, n) in bound {
        assert_eq!(parse_statement(stmt.cql()).markers, n, "{stmt:?}");
    }
}

#[test]
fn group_reads_select_what_their_rows_map() {
    let head = parse_statement(Stmt::SelectGroup.cql());
    let serial = parse_statement(Stmt::SelectGroupSerial.cql());
    assert_eq!(head.named, serial.named);
    assert_eq!(Stmt::SelectGroupSerial.class(), Class::SerialRead);
    assert_eq!(
        &head.named[..9],
        [
            "last_seq",
            "last_time_ms",
            "last_owner",
            "group_version",
            "group_dissolved",
            "group_record",
            "group_pending",
            "change_fence",
            "mention_all_seq"
        ]
    );
    let member = parse_statement(Stmt::SelectMember.cql());
    assert_eq!(
        &member.named[..5],
        ["user_id", "role", "joined_seq", "visible_from", "removed_seq"]
    );
    let page = parse_statement(Stmt::ListCurrent.cql());
    assert_eq!(&page.named[..4], ["user_id", "role", "joined_seq", "visible_from"]);
}

#[test]
fn member_rows_are_read_and_written_where_quorums_meet() {
    // Every statement on a member table is of the membership class, and no other is.
    for &stmt in Stmt::ALL {
        let p = parse_statement(stmt.cql());
        let member_table = p.table == "group_members" || p.table == "group_current";
        assert_eq!(stmt.class() == Class::Membership, member_table, "{stmt:?}");
    }
    use scylla::statement::{Consistency as C, SerialConsistency as S};
    // SERIAL LWTs let several datacentres write one group: LOCAL_QUORUM is raised to QUORUM.
    assert_eq!(membership_consistency(C::LocalQuorum, S::Serial), Some(C::Quorum));
    // Already meeting, or one writer DC per conversation (LOCAL_SERIAL): as configured.
    for c in [C::Quorum, C::EachQuorum, C::All, C::One, C::LocalOne] {
        assert_eq!(membership_consistency(c, S::Serial), None, "{c:?}");
    }
    assert_eq!(membership_consistency(C::LocalQuorum, S::LocalSerial), None);
}

#[test]
fn mentions_and_flags_statements_fit_their_rows() {
    // The page read returns, in order, the columns `listing::IndexRow` maps.
    let list = parse_statement(Stmt::ListIndex.cql());
    assert_eq!(
        &list.named[..6],
        ["conversation_id", "last_seq", "last_time_ms", "mention_seq", "muted", "pinned"]
    );
    // Mentions and flags are cells of the user's index row: one row of the user's partition.
    for stmt in [Stmt::UpsertIndexMention, Stmt::UpsertMention, Stmt::SetFlags] {
        let p = parse_statement(stmt.cql());
        assert_eq!(p.table, "user_conversations", "{stmt:?}");
        assert_eq!(p.kind, "UPDATE", "{stmt:?}");
        assert_eq!(stmt.class(), Class::Plain, "{stmt:?}");
    }
    let set = |stmt: Stmt| {
        let p = parse_statement(stmt.cql());
        p.named[..p.named.len() - p.restrictions.len()].to_vec()
    };
    assert_eq!(set(Stmt::UpsertIndexMention), ["last_seq", "last_time_ms", "mention_seq"]);
    assert_eq!(set(Stmt::UpsertMention), ["mention_seq"]);
    assert_eq!(set(Stmt::SetFlags), ["muted", "pinned"]);
    // The index write with a mention is the plain one plus the mention cell.
    let plain = set(Stmt::UpsertIndex);
    assert_eq!(&set(Stmt::UpsertIndexMention)[..plain.len()], plain.as_slice());
    // A mention of all in a group is set by the allocating LWT, which is the plain group send
    // plus that column: same conditions, same allocator columns.
    let mut expected = parse_statement(Stmt::CasGroupSend.cql()).named;
    let at = expected.iter().position(|c| c == "last_owner").expect("last_owner") + 1;
    expected.insert(at, "mention_all_seq".to_owned());
    assert_eq!(parse_statement(Stmt::CasGroupSendMentionAll.cql()).named, expected);
}
