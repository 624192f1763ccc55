# Thin aliases for ./dev (which needs nothing but bash and python3).
.PHONY: demo test bench install
demo: ; ./dev demo
test: ; ./dev test
bench: ; ./dev bench
install: ; ./dev install
