-- Partners that drop reading files over FTP. Only an scrypt hash of each password is stored.
CREATE TABLE ftp_users (
    login         text        PRIMARY KEY CHECK (login ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    password_hash text        NOT NULL CHECK (password_hash LIKE 'scrypt$%'),
    created_at    timestamptz NOT NULL,
    disabled_at   timestamptz
);
