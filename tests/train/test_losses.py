import torch

from codegemma.train import losses


def test_shift_trains_only_targets_inside_the_same_document():
    batch = {
        "tokens": torch.tensor([[10, 11, 12, 20, 21, 0]]),
        "segment_ids": torch.tensor([[1, 1, 1, 2, 2, 0]]),
        "loss_mask": torch.tensor([[True, True, True, True, True, False]]),
    }
    inputs, seg, targets, trained = losses.shift(batch)
    assert inputs.tolist() == [[10, 11, 12, 20, 21]]
    assert targets.tolist() == [[11, 12, 20, 21, 0]]
    # 12 -> 20 crosses documents, 21 -> pad is padding
    assert trained.tolist() == [[True, True, False, True, False]]


def test_loss_mask_excludes_prompt_tokens():
    batch = {
        "tokens": torch.tensor([[1, 2, 3, 4]]),
        "segment_ids": torch.tensor([[1, 1, 1, 1]]),
        "loss_mask": torch.tensor([[False, False, True, True]]),
    }
    assert losses.shift(batch)[3].tolist() == [[False, True, True]]


def test_lm_loss_sum_matches_manual_cross_entropy():
    torch.manual_seed(0)
    vocab = 7
    table = torch.randn(vocab, vocab)

    def model(ids, segment_ids=None):
        return table[ids]

    batch = {"tokens": torch.tensor([[1, 2, 3, 4]]), "segment_ids": torch.tensor([[1, 1, 2, 2]]),
             "loss_mask": torch.ones(1, 4, dtype=torch.bool)}
    total, count = losses.lm_loss_sum(model, batch)
    logp = torch.log_softmax(table, -1)
    assert count.item() == 2
    assert torch.allclose(total, -(logp[1, 2] + logp[3, 4]))


def test_dpo_loss():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))
    loss, stats = losses.dpo_loss(pc, pr, rc, rr, beta=0.5)
    # margin = 0.5 * ((-1 + 2) - (-3 + 2)) = 1
    assert torch.allclose(loss, -torch.nn.functional.logsigmoid(torch.tensor([1.0])))
    assert stats["reward_accuracy"].item() == 1.0
    equal, _ = losses.dpo_loss(rc, rr, rc, rr, beta=0.5)
    assert torch.allclose(equal, torch.log(torch.tensor([2.0])))
