//! The SQLite store: projects and their members, refresh tokens, seen
//! notification ids, the image index, scan results and jobs.
//!
//! Schema (created on open; `PRAGMA foreign_keys` on, WAL):
//!
//! ```sql
//! projects(name TEXT PRIMARY KEY, public INTEGER NOT NULL,
//!          gate_severity TEXT NULL, created_at INTEGER NOT NULL)
//! members(project TEXT REFERENCES projects ON DELETE CASCADE,
//!         username TEXT, role TEXT CHECK (role IN ('admin','developer','guest')),
//!         PRIMARY KEY (project, username))
//! gate_allow(project TEXT REFERENCES projects ON DELETE CASCADE,
//!            advisory TEXT, PRIMARY KEY (project, advisory))
//! refresh_tokens(hash TEXT PRIMARY KEY, identity TEXT /* JSON */,
//!                service TEXT, expires_at INTEGER)
//! notifications(event_id TEXT PRIMARY KEY, received_at INTEGER)
//! images(repository TEXT, digest TEXT, tag TEXT /* '' untagged */,
//!        media_type TEXT, size INTEGER, actor TEXT, pushed_at INTEGER,
//!        PRIMARY KEY (repository, digest, tag))
//! scans(digest TEXT PRIMARY KEY, scanned_at INTEGER, report TEXT /* JSON */)
//! jobs(id INTEGER PRIMARY KEY, kind TEXT, spec TEXT /* JSON */, state TEXT,
//!      attempts INTEGER, max_attempts INTEGER, error TEXT NULL,
//!      result TEXT NULL /* JSON */, created_at INTEGER, updated_at INTEGER)
//! ```

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use kisara_core::Identity;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{RegistryError, Result};
use crate::scope::Action;
use crate::token::unix_now;
use kisara_core::model::check_path_component;

/// A member's role in a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// pull, push, delete.
    Admin,
    /// pull, push.
    Developer,
    /// pull.
    Guest,
}

impl Role {
    /// What the role allows on the project's repositories.
    pub fn actions(self) -> &'static [Action] {
        match self {
            Self::Admin => &[Action::Pull, Action::Push, Action::Delete],
            Self::Developer => &[Action::Pull, Action::Push],
            Self::Guest => &[Action::Pull],
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Developer => "developer",
            Self::Guest => "guest",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        match text {
            "admin" => Ok(Self::Admin),
            "developer" => Ok(Self::Developer),
            "guest" => Ok(Self::Guest),
            other => Err(RegistryError::invalid(
                "role",
                format!("{other:?} (admin, developer or guest)"),
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A project: the repositories whose first path component is its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// The name.
    pub name: String,
    /// Anyone, anonymous too, may pull.
    pub public: bool,
}

/// A manifest the registry reported pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The repository.
    pub repository: String,
    /// The manifest digest.
    pub digest: String,
    /// The tag (`""` when pushed by digest).
    pub tag: String,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's size in bytes.
    pub size: u64,
    /// Who pushed it.
    pub actor: String,
    /// When, in seconds since the epoch.
    pub pushed_at: u64,
}

/// The shared SQLite store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS projects (
    name TEXT PRIMARY KEY, public INTEGER NOT NULL,
    gate_severity TEXT, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    username TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'developer', 'guest')),
    PRIMARY KEY (project, username));
CREATE TABLE IF NOT EXISTS gate_allow (
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    advisory TEXT NOT NULL, PRIMARY KEY (project, advisory));
CREATE TABLE IF NOT EXISTS refresh_tokens (
    hash TEXT PRIMARY KEY, identity TEXT NOT NULL,
    service TEXT NOT NULL, expires_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS notifications (
    event_id TEXT PRIMARY KEY, received_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    repository TEXT NOT NULL, digest TEXT NOT NULL, tag TEXT NOT NULL,
    media_type TEXT NOT NULL, size INTEGER NOT NULL, actor TEXT NOT NULL,
    pushed_at INTEGER NOT NULL, PRIMARY KEY (repository, digest, tag));
CREATE TABLE IF NOT EXISTS scans (
    digest TEXT PRIMARY KEY, scanned_at INTEGER NOT NULL, report TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, spec TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL, max_attempts INTEGER NOT NULL,
    error TEXT, result TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
";

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        Self::init(conn)
    }

    /// A database in memory, for tests.
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `work` on the connection off the async threads.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            work(&mut conn)
        })
        .await
        .map_err(|e| RegistryError::Key(format!("store task failed: {e}")))?
    }

    /// Creates a project, or changes its visibility.
    pub async fn put_project(&self, project: Project) -> Result<()> {
        check_path_component(&project.name)
            .map_err(|e| RegistryError::invalid("project name", e))?;
        self.call(move |c| {
            c.execute(
                "INSERT INTO projects (name, public, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET public = excluded.public",
                params![project.name, project.public, to_i64(unix_now())],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes a project with its members.
    pub async fn delete_project(&self, name: String) -> Result<()> {
        self.call(move |c| {
            match c.execute("DELETE FROM projects WHERE name = ?1", params![name])? {
                0 => Err(RegistryError::NotFound {
                    what: "project",
                    name,
                }),
                _ => Ok(()),
            }
        })
        .await
    }

    /// Every project, by name.
    pub async fn projects(&self) -> Result<Vec<Project>> {
        self.call(|c| {
            let mut stmt = c.prepare("SELECT name, public FROM projects ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                Ok(Project {
                    name: r.get(0)?,
                    public: r.get(1)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    /// The project `name`, if it exists.
    pub async fn project(&self, name: String) -> Result<Option<Project>> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT name, public FROM projects WHERE name = ?1",
                params![name],
                |r| {
                    Ok(Project {
                        name: r.get(0)?,
                        public: r.get(1)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Gives `username` `role` in `project` (replacing any role it had).
    pub async fn put_member(&self, project: String, username: String, role: Role) -> Result<()> {
        if username.is_empty() {
            return Err(RegistryError::invalid("member", "the user name is empty"));
        }
        self.call(move |c| {
            let exists: bool = c.query_row(
                "SELECT EXISTS (SELECT 1 FROM projects WHERE name = ?1)",
                params![project],
                |r| r.get(0),
            )?;
            if !exists {
                return Err(RegistryError::NotFound {
                    what: "project",
                    name: project,
                });
            }
            c.execute(
                "INSERT INTO members (project, username, role) VALUES (?1, ?2, ?3)
                 ON CONFLICT(project, username) DO UPDATE SET role = excluded.role",
                params![project, username, role.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    /// Removes `username` from `project`.
    pub async fn delete_member(&self, project: String, username: String) -> Result<()> {
        self.call(move |c| {
            match c.execute(
                "DELETE FROM members WHERE project = ?1 AND username = ?2",
                params![project, username],
            )? {
                0 => Err(RegistryError::NotFound {
                    what: "member",
                    name: format!("{username} in {project}"),
                }),
                _ => Ok(()),
            }
        })
        .await
    }

    /// The members of `project` with their roles.
    pub async fn members(&self, project: String) -> Result<Vec<(String, Role)>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT username, role FROM members WHERE project = ?1 ORDER BY username",
            )?;
            let rows = stmt.query_map(params![project], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            rows.map(|row| {
                let (user, role) = row?;
                Ok((user, Role::parse(&role)?))
            })
            .collect()
        })
        .await
    }

    /// For each project in `projects`: whether it exists and is public, and
    /// `username`'s role in it (`None` for anonymous).
    pub async fn access_of(
        &self,
        username: Option<String>,
        projects: Vec<String>,
    ) -> Result<Vec<(bool, Option<Role>)>> {
        self.call(move |c| {
            let mut public = c.prepare("SELECT public FROM projects WHERE name = ?1")?;
            let mut role =
                c.prepare("SELECT role FROM members WHERE project = ?1 AND username = ?2")?;
            projects
                .iter()
                .map(|project| {
                    let is_public = public
                        .query_row(params![project], |r| r.get::<_, bool>(0))
                        .optional()?
                        .unwrap_or(false);
                    let member = match &username {
                        Some(user) => role
                            .query_row(params![project, user], |r| r.get::<_, String>(0))
                            .optional()?
                            .map(|r| Role::parse(&r))
                            .transpose()?,
                        None => None,
                    };
                    Ok((is_public, member))
                })
                .collect()
        })
        .await
    }

    /// Stores a refresh token (only its hash) for `identity` and `service`.
    pub async fn put_refresh_token(
        &self,
        token: &str,
        identity: &Identity,
        service: String,
        lifetime_secs: u64,
    ) -> Result<()> {
        let hash = token_hash(token);
        let identity = serde_json::to_string(identity).expect("identities are plain JSON");
        self.call(move |c| {
            let now = unix_now();
            c.execute("DELETE FROM refresh_tokens WHERE expires_at < ?1", params![to_i64(now)])?;
            c.execute(
                "INSERT INTO refresh_tokens (hash, identity, service, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![hash, identity, service, to_i64(now + lifetime_secs)],
            )?;
            Ok(())
        })
        .await
    }

    /// The identity a live refresh token was issued to, for `service`.
    pub async fn refresh_identity(&self, token: &str, service: String) -> Result<Option<Identity>> {
        let hash = token_hash(token);
        self.call(move |c| {
            let found: Option<String> = c
                .query_row(
                    "SELECT identity FROM refresh_tokens WHERE hash = ?1 AND service = ?2 AND expires_at >= ?3",
                    params![hash, service, to_i64(unix_now())],
                    |r| r.get(0),
                )
                .optional()?;
            found
                .map(|json| {
                    serde_json::from_str(&json).map_err(|e| {
                        RegistryError::invalid("stored refresh token", e.to_string())
                    })
                })
                .transpose()
        })
        .await
    }

    /// Records a notification event id; `false` when it was seen before.
    pub async fn first_sighting(&self, event_id: String) -> Result<bool> {
        self.call(move |c| {
            Ok(c.execute(
                "INSERT OR IGNORE INTO notifications (event_id, received_at) VALUES (?1, ?2)",
                params![event_id, to_i64(unix_now())],
            )? == 1)
        })
        .await
    }

    /// Adds a pushed manifest to the index.
    pub async fn record_push(&self, image: ImageRecord) -> Result<()> {
        self.call(move |c| {
            // A tag points at one manifest: moving it drops the old row.
            if !image.tag.is_empty() {
                c.execute(
                    "DELETE FROM images WHERE repository = ?1 AND tag = ?2",
                    params![image.repository, image.tag],
                )?;
            }
            c.execute(
                "INSERT OR REPLACE INTO images (repository, digest, tag, media_type, size, actor, pushed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    image.repository,
                    image.digest,
                    image.tag,
                    image.media_type,
                    to_i64(image.size),
                    image.actor,
                    to_i64(image.pushed_at)
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Removes a deleted manifest (every tag of it) from the index.
    pub async fn record_delete(&self, repository: String, digest: String) -> Result<usize> {
        self.call(move |c| {
            Ok(c.execute(
                "DELETE FROM images WHERE repository = ?1 AND digest = ?2",
                params![repository, digest],
            )?)
        })
        .await
    }

    /// The index, optionally of one repository.
    pub async fn images(&self, repository: Option<String>) -> Result<Vec<ImageRecord>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT repository, digest, tag, media_type, size, actor, pushed_at FROM images
                 WHERE ?1 IS NULL OR repository = ?1 ORDER BY repository, pushed_at, tag",
            )?;
            let rows = stmt.query_map(params![repository], |r| {
                Ok(ImageRecord {
                    repository: r.get(0)?,
                    digest: r.get(1)?,
                    tag: r.get(2)?,
                    media_type: r.get(3)?,
                    size: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                    actor: r.get(5)?,
                    pushed_at: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }
}

fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn projects_members_and_the_index() {
        let store = Store::in_memory().unwrap();
        store
            .put_project(Project {
                name: "ctf".to_owned(),
                public: false,
            })
            .await
            .unwrap();
        let err = store
            .put_project(Project {
                name: "Bad Name".to_owned(),
                public: false,
            })
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("project name") && err.contains("Bad Name"),
            "{err}"
        );
        store
            .put_member("ctf".to_owned(), "alice".to_owned(), Role::Developer)
            .await
            .unwrap();
        let err = store
            .put_member("nope".to_owned(), "alice".to_owned(), Role::Guest)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("project not found: \"nope\""), "{err}");
        let access = store
            .access_of(
                Some("alice".to_owned()),
                vec!["ctf".to_owned(), "other".to_owned()],
            )
            .await
            .unwrap();
        assert_eq!(access, vec![(false, Some(Role::Developer)), (false, None)]);

        let image = |tag: &str, digest: &str| ImageRecord {
            repository: "ctf/x".to_owned(),
            digest: digest.to_owned(),
            tag: tag.to_owned(),
            media_type: "m".to_owned(),
            size: 1,
            actor: "alice".to_owned(),
            pushed_at: 1,
        };
        store.record_push(image("1", "sha256:a")).await.unwrap();
        store.record_push(image("1", "sha256:b")).await.unwrap();
        let images = store.images(None).await.unwrap();
        assert_eq!(
            images,
            vec![image("1", "sha256:b")],
            "a moved tag keeps one row"
        );
        assert_eq!(
            store
                .record_delete("ctf/x".to_owned(), "sha256:b".to_owned())
                .await
                .unwrap(),
            1
        );
        assert!(store.images(None).await.unwrap().is_empty());
        assert!(store.first_sighting("e1".to_owned()).await.unwrap());
        assert!(!store.first_sighting("e1".to_owned()).await.unwrap());
    }
}
