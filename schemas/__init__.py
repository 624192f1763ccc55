"""certgit.schemas: JSON Schemas for every YAML kind and the validator that positions errors."""
