"""Numbered schema migrations of the SQLite store: applied in order, each in one transaction.

Add a migration by appending ``(N, statements)``; never edit one that has shipped.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, tuple[str, ...]]] = [
    (
        1,
        (
            """CREATE TABLE projects (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                description TEXT NOT NULL,
                recipe TEXT NOT NULL,
                recipe_version INTEGER NOT NULL,
                hparams TEXT NOT NULL,
                strategy TEXT NOT NULL,
                settings TEXT NOT NULL,
                status TEXT NOT NULL,
                current_version INTEGER NOT NULL,
                public_key TEXT NOT NULL,
                created_at REAL NOT NULL,
                shard_sizes TEXT,
                next_shard INTEGER NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE versions (
                project_id INTEGER NOT NULL REFERENCES projects(id),
                version INTEGER NOT NULL,
                digest TEXT NOT NULL,
                created_at REAL NOT NULL,
                signature TEXT NOT NULL,
                metrics TEXT NOT NULL,
                updates INTEGER NOT NULL,
                contributors INTEGER NOT NULL,
                strategy_state_digest TEXT,
                PRIMARY KEY (project_id, version)
            )""",
            """CREATE TABLE challenges (
                challenge TEXT PRIMARY KEY,
                project_id INTEGER NOT NULL REFERENCES projects(id),
                expires_at REAL NOT NULL,
                used INTEGER NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE invites (
                code_hash TEXT PRIMARY KEY,
                project_id INTEGER NOT NULL REFERENCES projects(id),
                created_at REAL NOT NULL,
                max_uses INTEGER NOT NULL,
                uses INTEGER NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE clients (
                id TEXT PRIMARY KEY,
                project_id INTEGER NOT NULL REFERENCES projects(id),
                display_name TEXT NOT NULL,
                team TEXT,
                public_key TEXT NOT NULL,
                token_hash TEXT NOT NULL,
                created_at REAL NOT NULL,
                last_seen REAL NOT NULL,
                credit REAL NOT NULL DEFAULT 0,
                recent_sum REAL NOT NULL DEFAULT 0,
                recent_time REAL NOT NULL DEFAULT 0,
                accepted INTEGER NOT NULL DEFAULT 0,
                rejected INTEGER NOT NULL DEFAULT 0,
                UNIQUE (project_id, public_key)
            )""",
            """CREATE TABLE tasks (
                id TEXT PRIMARY KEY,
                project_id INTEGER NOT NULL REFERENCES projects(id),
                client_id TEXT NOT NULL REFERENCES clients(id),
                base_version INTEGER NOT NULL,
                shard_index INTEGER NOT NULL,
                status TEXT NOT NULL,
                issued_at REAL NOT NULL,
                deadline REAL NOT NULL,
                max_examples INTEGER NOT NULL,
                manifest TEXT NOT NULL,
                signature TEXT NOT NULL
            )""",
            "CREATE INDEX tasks_round ON tasks (project_id, base_version, status)",
            "CREATE INDEX tasks_client ON tasks (project_id, client_id, status)",
            "CREATE INDEX tasks_deadline ON tasks (status, deadline)",
            """CREATE TABLE aggregations (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                project_id INTEGER NOT NULL REFERENCES projects(id),
                base_version INTEGER NOT NULL,
                status TEXT NOT NULL,
                owner TEXT NOT NULL,
                claimed_at REAL NOT NULL
            )""",
            # At most one running aggregation per project: a second claim fails at the index.
            "CREATE UNIQUE INDEX one_running_aggregation ON aggregations (project_id) WHERE status = 'running'",
            """CREATE TABLE updates (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE,
                project_id INTEGER NOT NULL REFERENCES projects(id),
                task_id TEXT NOT NULL UNIQUE REFERENCES tasks(id),
                client_id TEXT NOT NULL REFERENCES clients(id),
                base_version INTEGER NOT NULL,
                payload_digest TEXT NOT NULL,
                num_examples INTEGER NOT NULL,
                max_examples INTEGER NOT NULL,
                credit REAL NOT NULL,
                accepted_at REAL NOT NULL,
                manifest_b64 TEXT NOT NULL,
                signature TEXT NOT NULL,
                metrics TEXT NOT NULL,
                status TEXT NOT NULL,
                aggregation_id INTEGER REFERENCES aggregations(id)
            )""",
            "CREATE INDEX updates_pending ON updates (project_id, status, base_version)",
        ),
    ),
    (
        2,
        (
            # A task refused for good (status 'rejected'): the refusal's code and time.
            "ALTER TABLE tasks ADD COLUMN rejected_code TEXT",
            "ALTER TABLE tasks ADD COLUMN rejected_at REAL",
            # Each contributor's measured pace (backend.pacing): seconds from lease to
            # upload per training step (a moving average) and its mean deviation, how
            # many uploads it rests on, when the last one came, and that upload's examples.
            "ALTER TABLE clients ADD COLUMN pace_s_per_step REAL",
            "ALTER TABLE clients ADD COLUMN pace_dev REAL",
            "ALTER TABLE clients ADD COLUMN pace_samples INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE clients ADD COLUMN pace_at REAL",
            "ALTER TABLE clients ADD COLUMN pace_examples INTEGER",
        ),
    ),
    (
        3,
        (
            # An update that made its project's aggregation fail (status 'quarantined'):
            # why, so that the organiser and the contributor can see it.
            "ALTER TABLE updates ADD COLUMN quarantine_reason TEXT",
        ),
    ),
    (
        4,
        (
            # Screening and pending credit (backend.services.crediting): each update's
            # global L2 norm and the network it came from (an IPv4 /24 or IPv6 /48), whether
            # its credit is pending, granted or withheld, and the reason code and sentence
            # when it was kept out of an aggregate (status 'rejected'). Updates stored before
            # this had their credit at upload: granted.
            "ALTER TABLE updates ADD COLUMN norm REAL",
            "ALTER TABLE updates ADD COLUMN source_net TEXT",
            "ALTER TABLE updates ADD COLUMN credit_state TEXT NOT NULL DEFAULT 'granted'",
            "ALTER TABLE updates ADD COLUMN verdict TEXT",
            "ALTER TABLE updates ADD COLUMN verdict_detail TEXT",
            "CREATE INDEX updates_digest ON updates (project_id, payload_digest)",
            "ALTER TABLE clients ADD COLUMN credit_pending REAL NOT NULL DEFAULT 0",
            # Spot checks (federated.replication): the relative difference between an
            # update and its re-execution, and each contributor's record of checks.
            "ALTER TABLE updates ADD COLUMN check_error REAL",
            "ALTER TABLE clients ADD COLUMN checks_passed INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE clients ADD COLUMN checks_failed INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE clients ADD COLUMN last_check_passed_at REAL",
            # Uploads refused for what they were (not for lateness) since the client's last
            # accepted one, and when the last was: leasing backs off (services.leasing).
            "ALTER TABLE clients ADD COLUMN refused_in_a_row INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE clients ADD COLUMN refused_at REAL",
        ),
    ),
    (
        5,
        (
            # Provenance (federated.provenance): what each version's signed manifest names
            # besides its model: the parent's model digest and signed-manifest digest, and
            # the Merkle root of its updates; and the ordered leaves under that root, so that
            # an inclusion proof can be served for any of them. Versions published before
            # this keep NULL here: their manifests (and signatures) had none of it.
            "ALTER TABLE versions ADD COLUMN parent_digest TEXT",
            "ALTER TABLE versions ADD COLUMN parent_manifest_digest TEXT",
            "ALTER TABLE versions ADD COLUMN updates_root TEXT",
            """CREATE TABLE version_updates (
                project_id INTEGER NOT NULL REFERENCES projects(id),
                version INTEGER NOT NULL,
                position INTEGER NOT NULL,
                update_id TEXT NOT NULL,
                payload_digest TEXT NOT NULL,
                PRIMARY KEY (project_id, version, position)
            )""",
            "CREATE INDEX version_updates_id ON version_updates (project_id, update_id)",
            "CREATE INDEX version_updates_digest ON version_updates (project_id, payload_digest)",
        ),
    ),
    (
        6,
        (
            # Organiser actions (backend.services.admin): a banned contributor (when and
            # why; NULL: not banned), and every action taken (ban, unban, revoke,
            # rollback), written in the transaction of its effect, for the page and the CLI.
            "ALTER TABLE clients ADD COLUMN banned_at REAL",
            "ALTER TABLE clients ADD COLUMN ban_reason TEXT",
            """CREATE TABLE actions (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                project_id INTEGER NOT NULL REFERENCES projects(id),
                at REAL NOT NULL,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                reason TEXT NOT NULL,
                detail TEXT NOT NULL
            )""",
            "CREATE INDEX actions_project ON actions (project_id, id)",
        ),
    ),
    (
        7,
        (
            # Retention (backend.services.retention): an update's payload is ``kept``, or
            # given up some versions after its fate was settled: ``pruning`` once the
            # database stops promising it (durably, before its blob is deleted), ``pruned``
            # once the blob is gone; and when it was given up. Updates stored before this
            # are ``kept`` and are pruned like any other.
            "ALTER TABLE updates ADD COLUMN payload_state TEXT NOT NULL DEFAULT 'kept'",
            "ALTER TABLE updates ADD COLUMN payload_pruned_at REAL",
            # Only what is kept is looked at: which payloads may go, and whether a blob is
            # still named by an update that keeps it (in any project: blobs are shared).
            "CREATE INDEX updates_payload_kept ON updates (project_id, seq) WHERE payload_state = 'kept'",
            "CREATE INDEX updates_payload_digest_kept ON updates (payload_digest) WHERE payload_state = 'kept'",
            "CREATE INDEX updates_payload_pruning ON updates (project_id) WHERE payload_state = 'pruning'",
        ),
    ),
    (
        8,
        (
            # Look-alike names (backend.names.name_key) stored with each client and indexed,
            # so a join checks its name against one index entry instead of every member
            # (joins fell from 97/s to 10/s at 3,000 members). Clients from before this
            # get their keys at the next join to their project.
            "ALTER TABLE clients ADD COLUMN name_key TEXT",
            "ALTER TABLE clients ADD COLUMN team_key TEXT",
            "CREATE INDEX clients_name_key ON clients (project_id, name_key)",
            "CREATE INDEX clients_team_key ON clients (project_id, team_key, created_at)",
            # The upload screen's typical norm (the last 32 aggregated updates) read once
            # per upload: without this it walked every update of the project (a fifth of
            # the server's time under bench/backend_load.py at 256 clients).
            "CREATE INDEX updates_aggregated_norms ON updates (project_id, seq)"
            " WHERE status = 'aggregated' AND norm IS NOT NULL",
        ),
    ),
    (
        9,
        (
            # The privacy ledger (backend.services.privacy, issue 14). Rows without a client
            # are the coordinator's own noisy aggregates (dp-fedavg), written in the
            # transaction that publishes their version or keeps it back, so a budget is
            # never spent without a record; rows with one are what a contributor reported
            # of its own spending with an accepted update (dp-sgd).
            """CREATE TABLE privacy_spend (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                project_id INTEGER NOT NULL REFERENCES projects(id),
                at REAL NOT NULL,
                client_id TEXT,
                noise_multiplier REAL NOT NULL,
                sample_rate REAL NOT NULL,
                steps INTEGER NOT NULL,
                epsilon REAL
            )""",
            "CREATE INDEX privacy_spend_project ON privacy_spend (project_id, client_id)",
        ),
    ),
    (
        10,
        (
            # Energy given (issue 16): what the contributor's computer reported it spent on
            # each update (joules; how: rapl, nvml, rapl+nvml or estimated; NULL: it did
            # not say), and each client's running sums, all of it and the measured part,
            # added in the transaction that accepts the update. Reported, never credited.
            "ALTER TABLE updates ADD COLUMN energy_joules REAL",
            "ALTER TABLE updates ADD COLUMN energy_method TEXT",
            "ALTER TABLE clients ADD COLUMN energy_joules REAL NOT NULL DEFAULT 0",
            "ALTER TABLE clients ADD COLUMN energy_measured_joules REAL NOT NULL DEFAULT 0",
        ),
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]
