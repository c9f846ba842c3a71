-- One role and one database per service, each role owning its database and nothing else: a
-- service cannot read another's tables (DESIGN.md). Runs once, on the cluster's first start
-- (/docker-entrypoint-initdb.d); the passwords come from the server container's environment.
\getenv datasets_password TUNELAB_DATASETS_DB_PASSWORD
\getenv deploy_password TUNELAB_DEPLOY_DB_PASSWORD
\getenv tracing_password TUNELAB_TRACING_DB_PASSWORD
\getenv eval_password TUNELAB_EVAL_DB_PASSWORD

CREATE ROLE datasets LOGIN PASSWORD :'datasets_password';
CREATE ROLE deploy LOGIN PASSWORD :'deploy_password';
CREATE ROLE tracing LOGIN PASSWORD :'tracing_password';
CREATE ROLE eval LOGIN PASSWORD :'eval_password';

CREATE DATABASE datasets OWNER datasets;
CREATE DATABASE deploy OWNER deploy;
CREATE DATABASE tracing OWNER tracing;
CREATE DATABASE eval OWNER eval;

-- PostgreSQL 15 no longer lets every role create in public; each owner gets its own database's.
\connect datasets
ALTER SCHEMA public OWNER TO datasets;
\connect deploy
ALTER SCHEMA public OWNER TO deploy;
\connect tracing
ALTER SCHEMA public OWNER TO tracing;
\connect eval
ALTER SCHEMA public OWNER TO eval;
-- And no role but a database's owner may connect to it.
\connect postgres
REVOKE CONNECT ON DATABASE datasets, deploy, tracing, eval FROM PUBLIC;
GRANT CONNECT ON DATABASE datasets TO datasets;
GRANT CONNECT ON DATABASE deploy TO deploy;
GRANT CONNECT ON DATABASE tracing TO tracing;
GRANT CONNECT ON DATABASE eval TO eval;
