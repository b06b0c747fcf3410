"""One server and one synthetic cohort (2,000 children, bulk-inserted) for every analytics test
module: the extract is built once per session from it."""

from __future__ import annotations

from typing import Iterator

import pytest

from bench.cohort import Cohort, generate, insert
from tests.conftest import start_server
from tests.support import Api

COHORT_SIZE = 2000


@pytest.fixture(scope="session")
def cohort_api(mongo, data_dir) -> Iterator[tuple[Api, Cohort]]:
    api, server = start_server(mongo, data_dir)
    cohort = generate(COHORT_SIZE)
    insert(api.services.repo.db, cohort)
    api.services.analytics.extract.refresh(full=True)
    yield api, cohort
    server.shutdown()
    api.session.close()
    api.services.repo.client.drop_database(api.services.settings.database)
    api.services.repo.close()
