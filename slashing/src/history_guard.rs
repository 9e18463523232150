//! The data-directory rule for the SQLite store: a directory that has held a slashing-protection
//! database never gets a fresh (empty) one implicitly, and a database that lost the tail of its
//! history is not opened as if nothing happened.
//!
//! Why: an empty history permits everything. If the database file is deleted or truncated, or
//! its write-ahead log is lost after a crash, starting again would sign a second block at a slot
//! or a conflicting attestation that the lost records would have refused (the EIP-3076 rules
//! only protect what is recorded). Lighthouse refuses likewise unless told otherwise
//! (`--init-slashing-protection`).
//!
//! How it is known, with two facts kept on disk:
//! - **The marker** `<database>-id` beside the database, written (atomically, fsynced) when a
//!   database is first used in the directory. It names the database's random identity, which
//!   the database also holds (`store_identity`, schema v2). Marker present and database missing
//!   or 0 bytes: the history is gone. Identities differ: another database replaced this one.
//! - **The clean-shutdown flag** in the database. Each session sets it to 0 and checkpoints (so
//!   the main file itself says "in use"); a clean close sets it to 1 as its last write and SQLite
//!   folds the write-ahead log into the file and deletes it. A database whose flag is 0 was not
//!   closed cleanly, so its `-wal` file must still exist (it holds the newest records); if the
//!   file is gone they are lost.
//!
//! A directory without a marker (new, or used by an ensign from before this rule) starts as
//! before, and gets its marker then. The decisions are pure functions over what was found
//! ([`before_open`], [`after_open`]); `sqlite_store` gathers the facts and applies them.
//! `--init-slashing-protection` (the store's `init` flag) turns a refusal into a warning.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::Error;

/// A database's identity: 16 random bytes, as 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseId(String);

impl DatabaseId {
    /// Parses 32 lowercase hex digits.
    pub fn parse(s: &str) -> Option<DatabaseId> {
        (s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| DatabaseId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DatabaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The database file as found before SQLite touched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFile {
    Missing,
    /// 0 bytes (SQLite would treat it as a new, empty database).
    Empty,
    Present,
}

/// What was on disk before opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDisk {
    /// The marker's database identity, if the marker exists.
    pub marker: Option<DatabaseId>,
    pub db: DbFile,
    /// The `-wal` file exists.
    pub wal: bool,
}

/// What the opened database says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: DatabaseId,
    /// How the previous session ended: `Some(true)` closed cleanly, `Some(false)` did not,
    /// `None` unknown (the database was created now, or by an ensign without this flag).
    pub last_session_clean: Option<bool>,
}

/// Why a database must not be opened implicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The directory was used (marker present) but the database file is missing or empty.
    HistoryGone { db: DbFile, expected: DatabaseId },
    /// The database is not the one the directory was used with.
    ForeignDatabase {
        expected: DatabaseId,
        found: DatabaseId,
    },
    /// The database was not closed cleanly and its write-ahead log is gone.
    LostWriteAheadLog,
}

/// The check before SQLite opens (and would create) the file.
pub fn before_open(disk: &OnDisk) -> Result<(), Problem> {
    match (&disk.marker, disk.db) {
        (Some(expected), DbFile::Missing | DbFile::Empty) => Err(Problem::HistoryGone {
            db: disk.db,
            expected: expected.clone(),
        }),
        _ => Ok(()),
    }
}

/// The check once the database is open and migrated (its identity read).
pub fn after_open(disk: &OnDisk, identity: &Identity) -> Result<(), Problem> {
    if let Some(expected) = &disk.marker {
        if *expected != identity.id {
            return Err(Problem::ForeignDatabase {
                expected: expected.clone(),
                found: identity.id.clone(),
            });
        }
    }
    if disk.db == DbFile::Present && identity.last_session_clean == Some(false) && !disk.wal {
        return Err(Problem::LostWriteAheadLog);
    }
    Ok(())
}

/// The marker's path for a database file.
pub fn marker_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-id");
    PathBuf::from(name)
}

/// The write-ahead log's path for a database file (SQLite's naming).
pub fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// The marker file's first line; the identity follows on the second.
const MARKER_HEADER: &str = "ensign slashing-protection database";

/// Gathers [`OnDisk`] for `db`. A marker that cannot be read or parsed is an error: guessing
/// would defeat the rule.
pub fn inspect(db: &Path) -> Result<OnDisk, Error> {
    let marker_file = marker_path(db);
    let marker = match std::fs::read_to_string(&marker_file) {
        Ok(text) => {
            let mut lines = text.lines();
            let id = match (lines.next(), lines.next().and_then(DatabaseId::parse)) {
                (Some(MARKER_HEADER), Some(id)) => id,
                _ => {
                    return Err(Error::Open(format!(
                        "{} is not an ensign database marker (expected \"{MARKER_HEADER}\" and a \
                         32-digit hex identity); restore it or remove it if the database beside \
                         it is the right one",
                        marker_file.display()
                    )))
                }
            };
            Some(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Error::Open(format!(
                "cannot read {}: {e}",
                marker_file.display()
            )))
        }
    };
    let db_state = match std::fs::metadata(db) {
        Ok(m) if m.len() == 0 => DbFile::Empty,
        Ok(_) => DbFile::Present,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DbFile::Missing,
        Err(e) => return Err(Error::Open(format!("cannot access {}: {e}", db.display()))),
    };
    Ok(OnDisk {
        marker,
        db: db_state,
        wal: wal_path(db).exists(),
    })
}

/// Writes the marker atomically (temporary file, fsync, rename, fsync of the directory), so
/// a crash leaves either no marker or a whole one.
pub fn write_marker(db: &Path, id: &DatabaseId) -> Result<(), Error> {
    let marker = marker_path(db);
    let err =
        |what: &str, e: std::io::Error| Error::Open(format!("{what} {}: {e}", marker.display()));
    let mut tmp_name = marker.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut f = std::fs::File::create(&tmp).map_err(|e| err("cannot create", e))?;
    f.write_all(format!("{MARKER_HEADER}\n{id}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| err("cannot write", e))?;
    drop(f);
    std::fs::rename(&tmp, &marker).map_err(|e| err("cannot write", e))?;
    #[cfg(unix)]
    if let Some(dir) = marker.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err("cannot sync the directory of", e))?;
    }
    Ok(())
}

/// The operator-facing explanation of a refusal: what is wrong, why it matters, what to do.
pub fn explain(problem: &Problem, db: &Path) -> String {
    let marker = marker_path(db);
    let wal = wal_path(db);
    let remedy = format!(
        "Restore {db} (together with {wal} if the backup has one) from a backup of this \
         directory, or, to start a new history on purpose, start once with \
         --init-slashing-protection=true and then import your latest interchange export \
         (`ensign eth2 import --from FILE`) before signing",
        db = db.display(),
        wal = wal.display(),
    );
    match problem {
        Problem::HistoryGone {
            db: state,
            expected,
        } => format!(
            "{} {}, but {} shows this directory held slashing-protection database {expected}: \
             starting with an empty history could sign slashable messages. {remedy}",
            db.display(),
            if *state == DbFile::Empty {
                "is empty (0 bytes)"
            } else {
                "is missing"
            },
            marker.display(),
        ),
        Problem::ForeignDatabase { expected, found } => format!(
            "{} is database {found}, but {} shows this directory held database {expected}: \
             the history here is not the one this directory signed with. {remedy}",
            db.display(),
            marker.display(),
        ),
        Problem::LostWriteAheadLog => format!(
            "{} was not closed cleanly and its write-ahead log {} is missing: the newest \
             signing records are lost. Copy the -wal file back if you still have it. {remedy}",
            db.display(),
            wal.display(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: char) -> DatabaseId {
        DatabaseId::parse(&c.to_string().repeat(32)).unwrap()
    }

    fn disk(marker: Option<char>, db: DbFile, wal: bool) -> OnDisk {
        OnDisk {
            marker: marker.map(id),
            db,
            wal,
        }
    }

    /// Every combination of the facts, against the rule written out case by case.
    #[test]
    fn decisions_over_every_combination() {
        for marker in [None, Some('a')] {
            for db in [DbFile::Missing, DbFile::Empty, DbFile::Present] {
                for wal in [false, true] {
                    let d = disk(marker, db, wal);
                    let before = before_open(&d);
                    let gone = marker.is_some() && db != DbFile::Present;
                    assert_eq!(before.is_err(), gone, "{d:?}");
                    if gone {
                        continue;
                    }
                    for found in ['a', 'b'] {
                        for clean in [None, Some(false), Some(true)] {
                            let ident = Identity {
                                id: id(found),
                                last_session_clean: clean,
                            };
                            let after = after_open(&d, &ident);
                            let expected = if marker.is_some_and(|m| m != found) {
                                Err(Problem::ForeignDatabase {
                                    expected: id('a'),
                                    found: id(found),
                                })
                            } else if db == DbFile::Present && clean == Some(false) && !wal {
                                Err(Problem::LostWriteAheadLog)
                            } else {
                                Ok(())
                            };
                            assert_eq!(after, expected, "{d:?} {ident:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn marker_round_trip_and_strict_parse() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.sqlite");
        assert_eq!(inspect(&db).unwrap(), disk(None, DbFile::Missing, false));
        write_marker(&db, &id('c')).unwrap();
        std::fs::write(&db, b"").unwrap();
        assert_eq!(inspect(&db).unwrap(), disk(Some('c'), DbFile::Empty, false));
        std::fs::write(marker_path(&db), "something else\n").unwrap();
        let e = inspect(&db).unwrap_err().to_string();
        assert!(e.contains("not an ensign database marker"), "{e}");
        assert!(DatabaseId::parse(&"A".repeat(32)).is_none());
        assert!(DatabaseId::parse(&"a".repeat(31)).is_none());
    }

    #[test]
    fn explanations_name_the_files_and_the_way_out() {
        let db = Path::new("/d/slashing-protection.sqlite");
        for p in [
            Problem::HistoryGone {
                db: DbFile::Missing,
                expected: id('a'),
            },
            Problem::ForeignDatabase {
                expected: id('a'),
                found: id('b'),
            },
            Problem::LostWriteAheadLog,
        ] {
            let text = explain(&p, db);
            assert!(text.contains("/d/slashing-protection.sqlite"), "{text}");
            assert!(text.contains("--init-slashing-protection=true"), "{text}");
        }
    }
}
