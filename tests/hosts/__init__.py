"""The kinds of real host the tests run against, one module each."""
