"""Authentication, authorization and admission: who calls, may they, and is the object safe."""
