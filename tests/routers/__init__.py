"""Router adapter tests."""
