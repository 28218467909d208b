-- One database and one login role per service, each role owning only its own database (docker-compose).
-- The official image runs this once, on an empty data volume, with psql as the superuser. Passwords come from
-- the container's environment (psql's \getenv), never from this file; an unset variable stops the script.
-- Later password changes: ALTER ROLE by hand, then the variable (see deploy/README.md).
\set ON_ERROR_STOP on

\getenv collection_password COLLECTION_DB_PASSWORD
\getenv customers_password CUSTOMERS_DB_PASSWORD
\getenv workorders_password WORKORDERS_DB_PASSWORD
\getenv readside_password READSIDE_DB_PASSWORD
\getenv vee_password VEE_DB_PASSWORD

CREATE ROLE collection LOGIN PASSWORD :'collection_password';
CREATE ROLE customers LOGIN PASSWORD :'customers_password';
CREATE ROLE workorders LOGIN PASSWORD :'workorders_password';
CREATE ROLE readside LOGIN PASSWORD :'readside_password';
CREATE ROLE vee LOGIN PASSWORD :'vee_password';

CREATE DATABASE collection OWNER collection;
CREATE DATABASE customers OWNER customers;
CREATE DATABASE workorders OWNER workorders;
CREATE DATABASE readside OWNER readside;
CREATE DATABASE vee OWNER vee;

-- A service connects to its own database only.
REVOKE ALL ON DATABASE collection, customers, workorders, readside, vee FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE collection TO collection;
GRANT CONNECT, TEMPORARY ON DATABASE customers TO customers;
GRANT CONNECT, TEMPORARY ON DATABASE workorders TO workorders;
GRANT CONNECT, TEMPORARY ON DATABASE readside TO readside;
GRANT CONNECT, TEMPORARY ON DATABASE vee TO vee;
