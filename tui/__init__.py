"""certgit.tui: the Textual on-call UI (a client of certgit.reconciler)."""
