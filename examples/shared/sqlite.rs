//! The stampede examples' database: a table that a lookup must scan. Included with
//! `#[path]` by `examples/stampede.rs` and `oneflight-redis/examples/fleet_stampede.rs`.

use rusqlite::Connection;
use std::path::Path;

/// What a lookup returns: how many items the category has and the highest price.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub items: i64,
    pub highest_price: i64,
}

/// Creates the table and fills it with `rows` rows over 1,000 categories.
pub fn fill(path: &Path, rows: usize) -> rusqlite::Result<()> {
    let mut db = Connection::open(path)?;
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE items (
             id INTEGER PRIMARY KEY,
             category INTEGER NOT NULL,
             price INTEGER NOT NULL,
             name TEXT NOT NULL
         );",
    )?;
    let tx = db.transaction()?;
    {
        let mut insert =
            tx.prepare("INSERT INTO items (category, price, name) VALUES (?1, ?2, ?3)")?;
        for i in 0..rows {
            insert.execute((i % 1_000, (i * 7_919) % 10_000, format!("item {i}")))?;
        }
    }
    tx.commit()
}

/// The lookup a cache miss costs: a full scan of the table (`category` has no index).
pub fn query(db: &Connection, category: usize) -> rusqlite::Result<Summary> {
    db.query_row(
        "SELECT count(*), coalesce(max(price), 0) FROM items WHERE category = ?1",
        [category],
        |row| {
            Ok(Summary {
                items: row.get(0)?,
                highest_price: row.get(1)?,
            })
        },
    )
}
