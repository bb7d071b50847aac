"""SQLite schema and numbered migrations.

``schema_version`` holds one row: the number of migrations applied. On open,
every migration past it runs in order, each in its own transaction with the
version bump. Migrations are append-only: never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);

    CREATE TABLE domains (
        name TEXT PRIMARY KEY,
        created REAL NOT NULL
    );

    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        address TEXT NOT NULL UNIQUE,
        domain TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        quota_bytes INTEGER,
        disabled INTEGER NOT NULL DEFAULT 0,
        usage INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX accounts_domain ON accounts(domain);

    CREATE TABLE aliases (
        source TEXT PRIMARY KEY,
        domain TEXT NOT NULL,
        targets TEXT NOT NULL          -- JSON array
    );
    CREATE INDEX aliases_domain ON aliases(domain);

    CREATE TABLE dkim_keys (
        domain TEXT NOT NULL,
        selector TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        private_pem TEXT NOT NULL,
        active INTEGER NOT NULL,
        PRIMARY KEY (domain, selector)
    );

    CREATE TABLE mailboxes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused
        account_id INTEGER NOT NULL,
        name TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL,
        highestmodseq INTEGER NOT NULL,
        special_use TEXT,
        subscribed INTEGER NOT NULL DEFAULT 1,
        UNIQUE (account_id, name)
    );

    -- One row per stored body; refcount counts messages + queue entries.
    -- Its rowid keys the full-text index, so copies share one index row.
    CREATE TABLE blobs (
        id INTEGER PRIMARY KEY,
        blob_id TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        refcount INTEGER NOT NULL
    );

    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        mailbox_id INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        flags TEXT NOT NULL,            -- " \\Seen kw " : space separated, space padded
        internaldate REAL NOT NULL,
        savedate REAL NOT NULL,
        size INTEGER NOT NULL,
        blob_id TEXT NOT NULL,
        UNIQUE (mailbox_id, uid)
    );
    CREATE INDEX messages_modseq ON messages(mailbox_id, modseq);
    CREATE INDEX messages_blob ON messages(blob_id);

    -- RFC 7162 §3.2.10 (VANISHED): remembered expunges.
    CREATE TABLE expunged (
        mailbox_id INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID;
    CREATE INDEX expunged_modseq ON expunged(mailbox_id, modseq);

    CREATE TABLE blob_cache (
        blob_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (blob_id, kind)
    ) WITHOUT ROWID;

    CREATE TABLE queue (
        id TEXT PRIMARY KEY,
        sender TEXT NOT NULL,
        blob_id TEXT NOT NULL,
        blob_size INTEGER NOT NULL,
        created REAL NOT NULL,
        next_attempt REAL NOT NULL,
        attempts INTEGER NOT NULL,
        ret TEXT,
        envid TEXT,
        smtputf8 INTEGER NOT NULL,
        body_8bit INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        pending INTEGER NOT NULL        -- recipients still pending (for queue_due)
    );
    CREATE INDEX queue_due ON queue(pending, next_attempt);

    CREATE TABLE queue_recipients (
        entry_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        address TEXT NOT NULL,
        state TEXT NOT NULL,
        notify TEXT,
        orcpt TEXT,
        last_status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        PRIMARY KEY (entry_id, idx)
    ) WITHOUT ROWID;

    CREATE TABLE auth_results (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        source_ip TEXT NOT NULL,
        header_from TEXT NOT NULL,
        spf TEXT NOT NULL,
        dkim TEXT NOT NULL,
        dmarc TEXT NOT NULL,
        disposition TEXT NOT NULL
    );
    CREATE INDEX auth_results_at ON auth_results(at);
    """,
    # 2: message bodies move into append-only segment files (sqlite/segments.py).
    # One row per stored blob, written in the transaction that follows the
    # segment's fdatasync; a blob exists exactly when its row does.
    """
    CREATE TABLE blob_locs (
        blob_id TEXT PRIMARY KEY,
        segment INTEGER NOT NULL,
        start INTEGER NOT NULL,
        length INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX blob_locs_segment ON blob_locs(segment, start);
    """,
    # 3: the delay warning (RFC 3464 "delayed" DSN) is sent once per entry: remembered
    # here, no longer as a prefix of last_error (which an older runner wrote).
    """
    ALTER TABLE queue ADD COLUMN delay_warned INTEGER NOT NULL DEFAULT 0;
    UPDATE queue SET delay_warned = 1, last_error = substr(last_error, 16)
        WHERE last_error LIKE '[delay-warned] %';
    """,
    # 4: TLS reports (RFC 8460) go out whatever the TLS policy (QueueEntry.tls_report).
    """
    ALTER TABLE queue ADD COLUMN tls_report INTEGER NOT NULL DEFAULT 0;
    """,
    # 5: the \Recent watermark is kept with the mailbox (Mailbox.recent_uid), not only in
    # the memory of the process; what is there at the upgrade is not recent.
    """
    ALTER TABLE mailboxes ADD COLUMN recent_uid INTEGER NOT NULL DEFAULT 0;
    UPDATE mailboxes SET recent_uid = uidnext - 1;
    """,
    # 6: SASL SCRAM-SHA-256. Each account keeps its SCRAM secret beside the argon2id hash
    # (NULL until the password is next set or used with PLAIN/LOGIN: policy/auth.py);
    # server_secrets holds random keys every process sharing the store must agree on.
    """
    ALTER TABLE accounts ADD COLUMN scram_sha256 TEXT;
    CREATE TABLE server_secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;
    """,
)


# The full-text index lives in its own file since it was moved out of the writer
# transaction: see textindex.py (an older database's msg_text is moved there at open).


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to the newest schema; returns the version. Autocommit conn."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    if row is None:
        conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        version = 0
    else:
        version = int(row[0])
    for number, script in enumerate(MIGRATIONS, start=1):
        if number <= version:
            continue
        # executescript commits first; wrap the script and the bump in one transaction.
        conn.executescript(
            f"BEGIN IMMEDIATE;\n{script}\nUPDATE schema_version SET version = {number};\nCOMMIT;"
        )
        version = number
    return version
