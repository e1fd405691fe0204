//! [`SqliteSink`]: events in an SQLite database, indexed and queryable.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kisara_core::model::ContainerId;
use kisara_core::sync::lock;
use kisara_core::{
    AuditEvent, AuditLog, AuditPage, AuditQuery, AuditSink, Error, QueryOrder, Result,
};
use rusqlite::{Connection, OpenFlags, ToSql, params_from_iter};

use super::committer::{Committer, GroupStore};
use super::{Durability, StoredEvent, storage_error};

const BACKEND: &str = "audit-sqlite";

/// The schema, one migration per version: `PRAGMA user_version` is the
/// number of migrations applied.
const MIGRATIONS: &[&str] = &[
    // 1: the events table and its indexes.
    "CREATE TABLE events (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms   INTEGER NOT NULL,
        session   TEXT NOT NULL,
        username  TEXT NOT NULL,
        container TEXT,
        owner     TEXT,
        kind      TEXT NOT NULL,
        decision  TEXT,
        event     TEXT NOT NULL
    );
    CREATE INDEX events_by_session ON events (session, id);
    CREATE INDEX events_by_username ON events (username, id);
    CREATE INDEX events_by_container ON events (container, id);
    CREATE INDEX events_by_owner ON events (owner, id);
    CREATE INDEX events_by_kind ON events (kind, decision, id);
    CREATE INDEX events_by_time ON events (time_ms);",
];

/// Finds the owner of a container, for the `owner` column (audit events
/// carry the container, not its labels).
pub type OwnerLookup = Arc<dyn Fn(&ContainerId) -> Option<String> + Send + Sync>;

/// Where and how a [`SqliteSink`] writes.
#[derive(Clone)]
pub struct SqliteConfig {
    /// The database file; created when missing.
    pub path: PathBuf,
    /// When `record` returns: [`Durability::Fsync`] and
    /// [`Durability::GroupCommit`] commit with `synchronous = FULL`,
    /// [`Durability::None`] with `synchronous = OFF`.
    pub durability: Durability,
    /// Fills the `owner` column; without it the column stays empty.
    pub owner_of: Option<OwnerLookup>,
}

impl fmt::Debug for SqliteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteConfig")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .field("owner_of", &self.owner_of.is_some())
            .finish()
    }
}

impl SqliteConfig {
    /// The database at `path`, each event committed on its own.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::Fsync,
            owner_of: None,
        }
    }
}

/// An [`AuditSink`] keeping events in an SQLite database (WAL mode), with
/// one indexed row per event; see the crate README for the schema.
///
/// # Contract
///
/// - `record` returns `Ok` after the event's transaction committed
///   (`synchronous = FULL` unless [`Durability::None`]); ids ascend in
///   record order and are never reused, even after rows are deleted.
/// - A failed commit (a full disk, an I/O error) is an error naming the
///   file; from then on every `record` is refused. Reopening continues.
/// - Queries read committed events through their own connection, so they
///   do not wait for writers.
/// - [`SqliteSink::shutdown`] stops taking events and returns once the
///   events handed over are committed; later `record`s are `Unavailable`.
pub struct SqliteSink {
    path: PathBuf,
    committer: Committer<SqliteStore>,
    reader: Arc<Mutex<Connection>>,
}

impl fmt::Debug for SqliteSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteSink")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteSink {
    /// Opens (creating and migrating) the database.
    pub async fn open(config: SqliteConfig) -> Result<Self> {
        let path = config.path.clone();
        let durability = config.durability;
        let (store, reader) = blocking(move || {
            let store = SqliteStore::open(config)?;
            let reader = Connection::open_with_flags(
                &store.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| sql_error(&store.path, "opening for reading", e))?;
            Ok((store, reader))
        })
        .await?;
        Ok(Self {
            path,
            committer: Committer::start(store, durability)?,
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `event` and returns its id.
    pub async fn record_with_id(&self, event: &AuditEvent) -> Result<u64> {
        self.committer.record(event).await
    }

    /// One page of the events matching `query`.
    pub async fn query(&self, query: &AuditQuery) -> Result<AuditPage> {
        query.validate()?;
        let query = query.clone();
        let reader = self.reader.clone();
        let path = self.path.clone();
        blocking(move || {
            let connection = lock(&reader);
            run_query(&connection, &path, &query)
        })
        .await
    }

    /// How many events match `query` (its order, limit and cursor aside).
    pub async fn count(&self, query: &AuditQuery) -> Result<u64> {
        query.validate()?;
        let query = query.clone();
        let reader = self.reader.clone();
        let path = self.path.clone();
        blocking(move || {
            let connection = lock(&reader);
            run_count(&connection, &path, &query)
        })
        .await
    }

    /// Deletes the events up to and including `id` (an outbox's delivered
    /// ones).
    pub(super) async fn delete_through(&self, id: u64) -> Result<()> {
        let path = self.path.clone();
        blocking(move || {
            // A connection of its own: the writer thread owns the other.
            let connection =
                Connection::open(&path).map_err(|e| sql_error(&path, "opening for pruning", e))?;
            connection
                .busy_timeout(std::time::Duration::from_secs(10))
                .map_err(|e| sql_error(&path, "setting the busy timeout", e))?;
            connection
                .execute("DELETE FROM events WHERE id <= ?1", [sql_id(id)])
                .map_err(|e| sql_error(&path, "deleting delivered events", e))?;
            Ok(())
        })
        .await
    }

    /// Commits what was handed over and stops; see the contract.
    pub async fn shutdown(&self) {
        self.committer.shutdown().await;
    }
}

#[async_trait]
impl AuditLog for SqliteSink {
    async fn query(&self, query: &AuditQuery) -> Result<AuditPage> {
        SqliteSink::query(self, query).await
    }
}

#[async_trait]
impl AuditSink for SqliteSink {
    async fn record(&self, event: &AuditEvent) -> Result<()> {
        self.committer.record(event).await.map(drop)
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| storage_error(BACKEND, "running an SQLite call", e))?
}

fn sql_error(path: &Path, doing: &str, e: rusqlite::Error) -> Error {
    storage_error(BACKEND, format!("{doing} {}", path.display()), e)
}

fn sql_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// The `WHERE` clause of `query`'s filters (not its cursor) and its values.
fn filters(query: &AuditQuery) -> (String, Vec<Box<dyn ToSql>>) {
    let mut sql = String::from(" WHERE 1 = 1");
    let mut values: Vec<Box<dyn ToSql>> = Vec::new();
    // `condition` holds one `?`, the value's place.
    let mut filter = |condition: &str, value: Box<dyn ToSql>| {
        values.push(value);
        let place = format!("?{}", values.len());
        sql.push_str(" AND ");
        sql.push_str(&condition.replacen('?', &place, 1));
    };
    if let Some(session) = &query.session {
        filter("session = ?", Box::new(session.as_str().to_owned()));
    }
    if let Some(username) = &query.username {
        filter("username = ?", Box::new(username.clone()));
    }
    if let Some(container) = &query.container {
        filter("container = ?", Box::new(container.as_str().to_owned()));
    }
    if let Some(owner) = &query.owner {
        filter("owner = ?", Box::new(owner.clone()));
    }
    if let Some(kind) = &query.kind {
        filter("kind = ?", Box::new(kind.clone()));
    }
    if let Some(decision) = &query.decision {
        filter("decision = ?", Box::new(decision.clone()));
    }
    if let Some(text) = &query.command {
        // The command's words joined as `AuditQuery::matches` joins them.
        filter(
            "kind = 'command' AND instr((SELECT group_concat(value, ' ') \
             FROM json_each(event, '$.command')), ?) > 0",
            Box::new(text.clone()),
        );
    }
    if let Some(since) = query.since {
        filter("time_ms >= ?", Box::new(sql_id(since.unix_millis())));
    }
    if let Some(until) = query.until {
        filter("time_ms < ?", Box::new(sql_id(until.unix_millis())));
    }
    (sql, values)
}

fn run_count(connection: &Connection, path: &Path, query: &AuditQuery) -> Result<u64> {
    let (filter, values) = filters(query);
    let sql = format!("SELECT count(*) FROM events{filter}");
    let count: i64 = connection
        .prepare_cached(&sql)
        .and_then(|mut statement| {
            statement.query_row(params_from_iter(values.iter()), |row| row.get(0))
        })
        .map_err(|e| sql_error(path, "counting in", e))?;
    Ok(u64::try_from(count).unwrap_or_default())
}

fn run_query(connection: &Connection, path: &Path, query: &AuditQuery) -> Result<AuditPage> {
    let (filter, mut values) = filters(query);
    let mut sql = format!("SELECT id, event FROM events{filter}");
    let (after, order) = match query.order {
        QueryOrder::NewestFirst => ("<", "DESC"),
        QueryOrder::OldestFirst => (">", "ASC"),
    };
    if let Some(cursor) = query.cursor {
        values.push(Box::new(sql_id(cursor)));
        sql.push_str(&format!(" AND id {after} ?{}", values.len()));
    }
    sql.push_str(&format!(" ORDER BY id {order} LIMIT {}", query.limit));
    let mut statement = connection
        .prepare_cached(&sql)
        .map_err(|e| sql_error(path, "querying", e))?;
    let rows = statement
        .query_map(params_from_iter(values.iter()), |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })
        .map_err(|e| sql_error(path, "querying", e))?;
    let mut events = Vec::new();
    for row in rows {
        let (id, json) = row.map_err(|e| sql_error(path, "reading a row of", e))?;
        let event = serde_json::from_str(&json).map_err(|e| {
            storage_error(
                BACKEND,
                format!("decoding event {id} of {}", path.display()),
                e,
            )
        })?;
        events.push(StoredEvent {
            id: u64::try_from(id).unwrap_or_default(),
            event,
        });
    }
    let next = (events.len() == query.limit)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    Ok(AuditPage { events, next })
}

/// The writer thread's connection.
struct SqliteStore {
    path: PathBuf,
    connection: Connection,
    owner_of: Option<OwnerLookup>,
}

impl SqliteStore {
    fn open(config: SqliteConfig) -> Result<Self> {
        let path = config.path;
        let connection = Connection::open(&path).map_err(|e| sql_error(&path, "opening", e))?;
        let fail = |doing: &str| {
            let path = path.clone();
            let doing = doing.to_owned();
            move |e| sql_error(&path, &doing, e)
        };
        connection
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(fail("setting the busy timeout of"))?;
        let mode: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(fail("enabling WAL on"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Backend {
                backend: BACKEND,
                message: format!(
                    "{} refused WAL mode (journal_mode is {mode})",
                    path.display()
                ),
                source: None,
            });
        }
        let synchronous = if config.durability.syncs() {
            "FULL"
        } else {
            "OFF"
        };
        connection
            .pragma_update(None, "synchronous", synchronous)
            .map_err(fail("setting synchronous on"))?;
        migrate(&connection, &path)?;
        Ok(Self {
            path,
            connection,
            owner_of: config.owner_of,
        })
    }
}

fn migrate(connection: &Connection, path: &Path) -> Result<()> {
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| sql_error(path, "reading the schema version of", e))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::Backend {
            backend: BACKEND,
            message: format!(
                "{} has schema version {version}, newer than this build knows ({known})",
                path.display()
            ),
            source: None,
        });
    }
    for (number, migration) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        let to = number + 1;
        connection
            .execute_batch(&format!(
                "BEGIN IMMEDIATE; {migration}; PRAGMA user_version = {to}; COMMIT;"
            ))
            .map_err(|e| sql_error(path, &format!("migrating to schema {to}"), e))?;
        tracing::info!(db = %path.display(), version = to, "migrated the audit schema");
    }
    Ok(())
}

impl GroupStore for SqliteStore {
    const BACKEND: &'static str = BACKEND;

    type Prepared = Row;

    fn prepare(event: &AuditEvent) -> Result<Row> {
        let json = serde_json::to_value(event)
            .map_err(|e| storage_error(BACKEND, "encoding an audit event", e))?;
        Ok(Row {
            time_ms: sql_id(event.time.unix_millis()),
            session: event.session.as_str().to_owned(),
            username: event.username.clone(),
            container: event.container.clone(),
            kind: json["type"].as_str().unwrap_or_default().to_owned(),
            decision: json["decision"]["decision"].as_str().map(str::to_owned),
            event: json.to_string(),
        })
    }

    fn commit(&mut self, rows: &[&Row], _sync: bool) -> Result<u64> {
        // How far a commit is synced is the connection's `synchronous`.
        let path = self.path.clone();
        let fail = |doing: &'static str| {
            let path = path.clone();
            move |e| sql_error(&path, doing, e)
        };
        let transaction = self
            .connection
            .transaction()
            .map_err(fail("starting a transaction on"))?;
        let mut first = None;
        {
            let mut insert = transaction
                .prepare_cached(
                    "INSERT INTO events (time_ms, session, username, container, owner, kind, decision, event)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(fail("preparing an insert into"))?;
            for row in rows {
                let owner = row
                    .container
                    .as_ref()
                    .and_then(|c| self.owner_of.as_ref().and_then(|lookup| lookup(c)));
                insert
                    .execute(rusqlite::params![
                        row.time_ms,
                        row.session,
                        row.username,
                        row.container.as_ref().map(ContainerId::as_str),
                        owner,
                        row.kind,
                        row.decision,
                        row.event,
                    ])
                    .map_err(fail("inserting into"))?;
                first.get_or_insert(transaction.last_insert_rowid());
            }
        }
        transaction.commit().map_err(fail("committing to"))?;
        Ok(first.map_or(0, |id| u64::try_from(id).unwrap_or_default()))
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

/// An event's columns, encoded by the recording task.
pub(super) struct Row {
    time_ms: i64,
    session: String,
    username: String,
    container: Option<ContainerId>,
    kind: String,
    decision: Option<String>,
    event: String,
}
