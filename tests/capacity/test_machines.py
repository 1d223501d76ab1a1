"""Machine types from their families' rules, the agents' reserve, the smallest fitting machine,
and the share of a machine this host can measure."""

import math

import pytest

from components.capacity.machines import (
    FAMILIES,
    GIB,
    MACHINE_TYPES,
    MEMORY_EXCEPTIONS_GIB,
    MIB,
    MIN_MEASURED_CPUS,
    family_names,
    machine_type,
    measurable_share,
    smallest_fitting,
    usable,
)


def test_the_table_follows_each_family_rule() -> None:
    for family in FAMILIES:
        for vcpus in family.sizes:
            machine = machine_type(f"{family.name}-{vcpus}")
            gib = MEMORY_EXCEPTIONS_GIB.get(machine.name, family.gib_per_vcpu * vcpus)
            assert machine.vcpus == vcpus
            assert machine.family == family.name
            assert abs(machine.memory_bytes - gib * GIB) < MIB
    assert len(MACHINE_TYPES) == sum(len(family.sizes) for family in FAMILIES)


def test_published_sizes_come_out_as_compute_engine_states_them() -> None:
    # Compute Engine's memoryMb (MiB) of these types.
    assert machine_type("n1-standard-2").memory_bytes == 7680 * MIB
    assert machine_type("n1-highcpu-2").memory_bytes == 1843 * MIB
    assert machine_type("n1-highmem-96").memory_bytes == 624 * GIB
    assert machine_type("e2-highmem-16").memory_bytes == 128 * GIB
    assert machine_type("n2-highmem-128").memory_bytes == 864 * GIB


def test_g2_machines_carry_their_fixed_l4_count() -> None:
    counts = {m.vcpus: m.gpus for m in MACHINE_TYPES.values() if m.family == "g2-standard"}
    assert counts == {4: 1, 8: 1, 12: 1, 16: 1, 24: 2, 32: 1, 48: 4, 96: 8}
    assert {m.gpu_type for m in MACHINE_TYPES.values() if m.gpus} == {"NVIDIA_L4"}
    assert all(m.gpu_type is None for m in MACHINE_TYPES.values() if not m.gpus)


def test_an_unknown_size_names_the_family_s_sizes_and_every_family() -> None:
    with pytest.raises(ValueError) as raised:
        machine_type("n1-standard-6")
    message = str(raised.value)
    assert "'n1-standard-6'" in message
    assert "n1-standard-4" in message and "n1-standard-8" in message
    assert all(family in message for family in family_names())


def test_a_misspelt_name_gets_the_nearest_names() -> None:
    with pytest.raises(ValueError, match=r"nearest: .*n1-standard-4"):
        machine_type("n1-standrd-4")


def gke_reserve_bytes(memory_gib: float) -> float:
    """GKE's published memory reserve, written out tier by tier."""
    tiers = [(4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (math.inf, 0.02)]
    reserve, left = 0.0, memory_gib
    for size, share in tiers:
        taken = min(left, size)
        reserve += taken * share
        left -= taken
    return reserve * GIB + 100 * MIB  # plus the eviction threshold


@pytest.mark.parametrize(
    "name", ["n1-standard-2", "n1-highcpu-2", "e2-highmem-16", "n2-standard-128"]
)
def test_usable_memory_is_the_machine_less_gke_s_reserve(name: str) -> None:
    machine = machine_type(name)
    expected = machine.memory_bytes - gke_reserve_bytes(machine.memory_bytes / GIB)
    assert abs(usable(machine).memory_bytes - expected) < 2 * MIB


def test_usable_cpus_keep_gke_s_cpu_reserve() -> None:
    assert usable(machine_type("n1-standard-2")).cpus == pytest.approx(2 - 0.06 - 0.01)
    eight = 8 - (0.06 + 0.01 + 2 * 0.005 + 4 * 0.0025)
    assert usable(machine_type("n1-standard-8")).cpus == math.floor(eight * 100) / 100


def test_the_reserve_is_a_smaller_share_of_larger_machines() -> None:
    for family in FAMILIES:
        machines = [machine_type(f"{family.name}-{n}") for n in family.sizes]
        shares = [usable(m).memory_bytes / m.memory_bytes for m in machines]
        assert all(0 < share < 1 for share in shares)
        assert shares == sorted(shares), family.name


def test_smallest_fitting_has_the_fewest_vcpus_then_the_least_memory() -> None:
    for need in (GIB, 3 * GIB, 20 * GIB, 100 * GIB):
        chosen = smallest_fitting(need)
        assert usable(chosen).memory_bytes >= need
        assert not chosen.gpus
        for other in MACHINE_TYPES.values():
            if usable(other).memory_bytes >= need and not other.gpus:
                assert (other.vcpus, other.memory_bytes) >= (chosen.vcpus, chosen.memory_bytes)


def test_smallest_fitting_keeps_to_a_family_and_a_vcpu_floor() -> None:
    chosen = smallest_fitting(3 * GIB, family="n1-highcpu", min_vcpus=4)
    assert chosen.family == "n1-highcpu" and chosen.vcpus >= 4
    assert usable(chosen).memory_bytes >= 3 * GIB
    smaller = [
        m
        for m in MACHINE_TYPES.values()
        if m.family == "n1-highcpu" and 4 <= m.vcpus < chosen.vcpus
    ]
    assert all(usable(m).memory_bytes < 3 * GIB for m in smaller)
    assert smallest_fitting(GIB, family="g2-standard").name == "g2-standard-4"


def test_smallest_fitting_refuses_what_nothing_holds() -> None:
    with pytest.raises(ValueError, match="no machine type in family e2-highcpu"):
        smallest_fitting(64 * GIB, family="e2-highcpu")
    with pytest.raises(ValueError, match="not in our table"):
        smallest_fitting(GIB, family="a2-highgpu")


def test_a_small_machine_is_measured_at_full_size_on_a_large_host() -> None:
    machine = machine_type("n1-standard-2")
    share = measurable_share(machine, host_cpus=16, load_cpus=2)
    assert share.cpu_limit == usable(machine).cpus
    assert share.memory_limit_bytes == usable(machine).memory_bytes
    assert share.scale == 1.0 and not share.scaled
    assert "full usable share" in share.note()


def test_a_large_machine_is_measured_at_what_the_host_spares_and_scaled() -> None:
    machine = machine_type("n1-standard-8")
    share = measurable_share(machine, host_cpus=2, load_cpus=1)
    assert share.cpu_limit == 1.0  # a 1-vCPU limit fits a 2-core host beside the load
    assert share.scale == pytest.approx(usable(machine).cpus / 1.0, abs=1e-3)
    assert share.memory_limit_bytes == usable(machine).memory_bytes  # memory is not scaled
    note = share.note()
    assert share.scaled and "scaled by" in note and "upper bound" in note


def test_a_fractional_share_is_rounded_down_and_scaled_from_it() -> None:
    share = measurable_share(machine_type("n1-standard-4"), host_cpus=3, load_cpus=0.755)
    assert share.cpu_limit == 2.24
    assert share.scale == round(usable(machine_type("n1-standard-4")).cpus / 2.24, 3)


def test_a_host_without_room_beside_the_load_is_refused() -> None:
    with pytest.raises(ValueError, match=rf"under the {MIN_MEASURED_CPUS:g} CPU minimum"):
        measurable_share(machine_type("n1-standard-2"), host_cpus=1, load_cpus=1)
