-- DEV ONLY: run once by the dev PostgreSQL on its first start. One role and one database per
-- service, each role owning its database and able to connect to no other. The passwords are
-- those of kustomization.yaml here, public in this repository.
CREATE ROLE datasets LOGIN PASSWORD 'dev-only-datasets-password';
CREATE DATABASE datasets OWNER datasets;
REVOKE ALL ON DATABASE datasets FROM PUBLIC;

CREATE ROLE deploy LOGIN PASSWORD 'dev-only-deploy-password';
CREATE DATABASE deploy OWNER deploy;
REVOKE ALL ON DATABASE deploy FROM PUBLIC;

CREATE ROLE tracing LOGIN PASSWORD 'dev-only-tracing-password';
CREATE DATABASE tracing OWNER tracing;
REVOKE ALL ON DATABASE tracing FROM PUBLIC;

CREATE ROLE eval LOGIN PASSWORD 'dev-only-eval-password';
CREATE DATABASE eval OWNER eval;
REVOKE ALL ON DATABASE eval FROM PUBLIC;
