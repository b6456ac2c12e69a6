import torch

from metalearn_cli.decoders import DECODERS


def test_prototype_logits_are_negative_squared_distances_to_class_means():
    torch.manual_seed(0)
    decoder = DECODERS.build({"name": "prototype"}, in_dim=8)
    support = torch.randn(2, 6, 8)
    labels = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])
    query = torch.randn(2, 4, 8)
    logits = decoder(support, labels, query, 3)
    for t in range(2):
        protos = torch.stack([support[t][labels[t] == c].mean(0) for c in range(3)])
        expected = -torch.cdist(query[t], protos).square()
        torch.testing.assert_close(logits[t], expected, atol=1e-4, rtol=1e-4)


def test_every_decoder_gives_task_logits():
    for name in DECODERS.names():
        decoder = DECODERS.build({"name": name}, in_dim=5, max_way=4)
        logits = decoder(torch.randn(3, 4, 5), torch.tensor([[0, 1, 0, 1]] * 3), torch.randn(3, 7, 5), 2)
        assert logits.shape == (3, 7, 2)
