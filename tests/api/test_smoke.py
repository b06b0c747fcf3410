from tests.support import outcome_code


def test_metadata_is_open(api):
    response = api.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.json()["fhirVersion"] == "4.0.1"


def test_create_read(api):
    child = api.new_child()
    response = api.get(f"/fhir/Patient/{child['id']}", api.la())
    assert response.status_code == 200, response.text
    assert response.headers["ETag"] == 'W/"1"'


def test_no_token_401(api):
    response = api.get("/fhir/Patient")
    assert response.status_code == 401
    assert outcome_code(response) == "login"
