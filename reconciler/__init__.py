"""certgit.reconciler: source -> model -> plan -> execute -> record."""
