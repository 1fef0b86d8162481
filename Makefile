# syncbridge: every developer task has one entry point here; the work is in scripts/.
.PHONY: setup test demo bench install-ext lint regress isolation package package-test pg-start pg-stop psql

setup:        ## install what a fresh machine lacks (idempotent)
	scripts/setup.sh
test:         ## set-up, then every test tier
	scripts/test.sh
demo:         ## the main job on a throwaway cluster (TARGET=graph|github|jira|linear|webhook|ldap)
	TARGET=$(TARGET) scripts/demo.sh
bench:        ## benchmarks; figures to bench/results/latest.json
	scripts/bench.sh $(ARGS)
install-ext:  ## build and install the extension into the system PostgreSQL
	bash -c 'source scripts/lib.sh && install_ext'
lint:
	cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings
regress:      ## only the pg_regress suite
	scripts/regress.sh
isolation:    ## only the isolation specs (races of the export queue)
	scripts/isolation.sh
package:      ## the Debian package target/package/syncbridge_<version>_<arch>.deb
	scripts/package.sh
package-test: package  ## build the package, then check it without installing it
	scripts/package-test.sh
pg-start:     ## developer cluster under .dev/pg
	scripts/pg.sh start
pg-stop:
	scripts/pg.sh stop
psql:
	scripts/pg.sh psql
