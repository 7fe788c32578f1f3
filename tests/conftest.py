import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # gpty2_wiki.py

from wiki_server import WikiServer  # importable: pytest (default "prepend" mode) puts tests/ on sys.path


@pytest.fixture
def wiki_server():
    """A mock MediaWiki Action API on 127.0.0.1 (see tests/wiki_server.py), closed after the test."""
    server = WikiServer(seed=0)
    yield server
    server.close()
