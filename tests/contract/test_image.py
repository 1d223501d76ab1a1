"""The image check without an image: what it reads from a container, and what it refuses."""

from pathlib import Path

import pytest

from components import vertex
from components.contract import (
    check_image,
    check_model_image,
    describe_listening,
    listening_sockets,
)

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   1: 00000000:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A
   1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A
"""


def test_listening_sockets_are_read_from_proc_net_tcp():
    assert listening_sockets(PROC_NET_TCP) == [
        ("127.0.0.1", 8080),
        ("0.0.0.0", 5000),
        ("::", 8081),
        ("::1", 80),
    ]


@pytest.mark.parametrize(
    ("sockets", "port", "says"),
    [
        ([("0.0.0.0", 8080)], 8080, ""),
        ([("::", 8080)], 8080, ""),
        ([], 8080, "nothing listens on any TCP port"),
        ([("127.0.0.1", 8080)], 8080, "loopback interface only"),
        ([("0.0.0.0", 5000)], 8080, "listens on 0.0.0.0:5000, not on the declared port 8080"),
    ],
)
def test_describe_listening_explains_a_refused_port(
    sockets: list[tuple[str, int]], port: int, says: str
):
    note = describe_listening(sockets, port)
    assert (says in note) if says else note == ""


def test_upload_needs_explicit_routes_not_vertex_defaults(tmp_path: Path):
    with pytest.raises(ValueError, match="name the health and predict routes explicitly"):
        check_model_image(
            "any",
            tmp_path,
            health_route=vertex.DEFAULT_HEALTH_ROUTE,
            predict_route=vertex.DEFAULT_PREDICT_ROUTE,
            engine=object(),
        )


def test_check_image_refuses_aip_variables_in_user_env():
    with pytest.raises(ValueError, match=r"\['AIP_STORAGE_URI'\].*reserves the AIP_ prefix"):
        check_image("any", instances=[{}], env={"AIP_STORAGE_URI": "gs://b/m"}, engine=object())
