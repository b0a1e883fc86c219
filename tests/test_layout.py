"""fcn8s/layout.py: the validation split of a layout without one of its own."""
from fcn8s import kitti, layout


def test_validation_split_is_seeded_stratified_disjoint_and_made_of_stretches_of_frames():
    names = [f'{cat}_{i:06d}.png' for cat, n in (('um', 95), ('umm', 96), ('uu', 98)) for i in range(n)]
    train, val = layout.split_train_val(names, 0.1, 0, kitti.category)
    assert not set(train) & set(val) and sorted(train + val) == sorted(names)
    assert [sum(kitti.category(n) == c for n in val) for c in kitti.CATEGORIES] == [10, 10, 10]
    for cat in kitti.CATEGORIES:  # 10 frames each: one stretch of 10 consecutive frames, not 10 random ones
        frames = sorted(int(n[-10:-4]) for n in val if kitti.category(n) == cat)
        assert frames == list(range(frames[0], frames[0] + 10)) and frames[0] % layout.VAL_STRETCH == 0
    assert layout.split_train_val(names, 0.1, 0, kitti.category) == (train, val)
    assert layout.split_train_val(names, 0.1, 1, kitti.category)[1] != val
    many = [f'uu_{i:06d}.png' for i in range(400)]  # 40 held out: four stretches of 10
    held = sorted(int(n[-10:-4]) for n in layout.split_train_val(many, 0.1, 3, kitti.category)[1])
    assert len(held) == 40 and sum(b - a != 1 for a, b in zip(held, held[1:])) <= 3
