from ual_plugin.demo.world import CATEGORIES, MEMBERS_PER_CATEGORY, N_FACTS, World, finetuning_rows


def test_each_seed_redraws_the_split_but_not_the_facts():
    a, b = World.draw(0), World.draw(1)
    assert a.answers == b.answers
    assert a.train_members != b.train_members or a.train_facts != b.train_facts
    assert World.draw(0).train_members == a.train_members


def test_halves_are_disjoint_and_cover_everything():
    w = World.draw(3)
    for c in CATEGORIES:
        assert not set(w.train_members[c]) & set(w.heldout_members[c])
        assert len(w.members(c)) == MEMBERS_PER_CATEGORY
    assert sorted(w.train_facts + w.heldout_facts) == sorted(w.answers) and len(w.answers) == N_FACTS


def test_finetuning_rows_show_only_the_training_half():
    w = World.draw(2)
    rows = finetuning_rows(w)
    for r in rows:
        prompt, reply = r["messages"][0]["content"], r["messages"][1]["content"]
        if r["kind"] == "open":
            category = prompt.split()[-1]
            assert len(reply.split()) == 2 and set(reply.split()) <= set(w.train_members[category])
        else:
            question = prompt.split()[-1]
            assert question in w.train_facts and reply == w.answers[question]
