"""Engines write the dump file. They know nothing of the CLR, the plan or the CLI."""
