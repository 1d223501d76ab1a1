"""An endpoint's traffic split, with Vertex AI's rules: deployed model id -> percent of requests.

A split's percentages are whole numbers from 0 to 100 that add up to 100 (an endpoint with no
deployed model has an empty split); a deployed model missing from it gets no traffic. The
arithmetic is the aiplatform SDK's (``Endpoint._allocate_traffic`` and ``_unallocate_traffic``,
compared with it in the tests): a new model's share is taken from the others in proportion,
and an undeployed model's share goes back to them in proportion. The local endpoint's router
and the rollout steps on Vertex both use these functions, so both split alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

DEPLOYING = "0"
"""The key ``ModelDeployOp`` / ``DeployModelRequest.traffic_split`` uses for the model being
deployed."""


class TrafficSplitError(ValueError):
    """A traffic split Vertex would refuse; the message says which rule it breaks."""


def check_split(split: Mapping[str, object], deployed: Iterable[str]) -> dict[str, int]:
    """``split`` as ``{id: int}``, checked against the endpoint's ``deployed`` model ids.

    Raises:
        TrafficSplitError: an unknown id, a share that is not a whole number from 0 to 100,
            or shares that do not add up to 100 (0 only when nothing is deployed).
    """
    known = list(deployed)
    checked: dict[str, int] = {}
    for key, value in split.items():
        if key not in known:
            raise TrafficSplitError(
                f"traffic split names {key!r}, which is not deployed on the endpoint "
                f"(deployed: {', '.join(known) or 'none'})"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TrafficSplitError(f"traffic split {key}={value!r} is not a number")
        try:
            number = float(value)
        except ValueError:
            raise TrafficSplitError(f"traffic split {key}={value!r} is not a number") from None
        if not number.is_integer() or not 0 <= number <= 100:
            raise TrafficSplitError(
                f"traffic split {key}={value!r}: each share is a whole percent from 0 to 100"
            )
        checked[key] = int(number)
    total = sum(checked.values())
    if known and total != 100:
        raise TrafficSplitError(
            f"traffic split {format_split(checked)} adds up to {total}%, not 100%: Vertex "
            "refuses a split that does not (every request must go somewhere)"
        )
    return checked


def _scaled(shares: Mapping[str, int], over: int, times: int, total: int) -> dict[str, int]:
    """Each share as ``share / over * times`` rounded down (in the SDK's order of operations,
    so float rounding agrees with it), the remainder handed out one percent each in order
    until they add up to ``total``."""
    scaled = {key: int(share / over * times) for key, share in shares.items()}
    left = total - sum(scaled.values())
    for key in scaled:
        if left == 0:
            break
        scaled[key] += 1
        left -= 1
    return scaled


def with_new_model(
    split: Mapping[str, int], percent: int, new_id: str = DEPLOYING
) -> dict[str, int]:
    """The split once ``new_id`` is deployed at ``percent``: the others keep ``100 - percent``
    between them, in proportion to their shares (dropped at 100: no traffic)."""
    if not 0 <= percent <= 100:
        raise TrafficSplitError(f"a new model's share is 0 to 100 percent, not {percent}")
    rest = 100 - percent
    result = _scaled(split, 100, rest, rest) if rest else {}
    result[new_id] = percent
    return result


def without_model(split: Mapping[str, int], deployed_id: str) -> dict[str, int]:
    """The split once ``deployed_id`` serves nothing: its share goes back to the others in
    proportion to theirs; it stays in the split at 0 (as the SDK leaves it before undeploy)."""
    others = {key: share for key, share in split.items() if key != deployed_id}
    left = 100 - split.get(deployed_id, 0)
    result = _scaled(others, left, 100, 100) if left else dict(others)
    result[deployed_id] = 0
    return result


def only(deployed_id: str, deployed: Iterable[str]) -> dict[str, int]:
    """Every request to ``deployed_id``, none to the other ``deployed`` models."""
    return {key: 100 if key == deployed_id else 0 for key in {*deployed, deployed_id}}


def serving(split: Mapping[str, int]) -> dict[str, int]:
    """The models that get traffic, without those at 0."""
    return {key: share for key, share in split.items() if share > 0}


def parse_split(text: str) -> dict[str, int]:
    """``"A=90,B=10"`` as ``{"A": 90, "B": 10}`` (checked against the endpoint later).

    Raises:
        TrafficSplitError: a part without ``=`` or a share that is not a whole number.
    """
    split: dict[str, int] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip().isdigit():
            raise TrafficSplitError(
                f"traffic split part {part!r}: write DEPLOYED_MODEL_ID=PERCENT, e.g. "
                "--split 1234=90,5678=10"
            )
        split[key.strip()] = int(value)
    if not split:
        raise TrafficSplitError("an empty traffic split: write --split 1234=90,5678=10")
    return split


def format_split(split: Mapping[str, int]) -> str:
    """``A=90,B=10`` (the form ``parse_split`` reads), largest share first."""
    ordered = sorted(split.items(), key=lambda item: (-item[1], item[0]))
    return ",".join(f"{key}={share}" for key, share in ordered) or "(empty)"
