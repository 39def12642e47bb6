#!/usr/bin/env python3
# model_sizes.py - size on disk of a BLIP-2 checkpoint per weight type (f32,
# f16/bf16, q8_0), counted from its config.json the way blip2-convert
# packs it: the matrices (linear layers, embed_tokens / shared, an untied
# lm_head, the patch embedding) in the type, with q8_0 as 34 bytes per 32
# values (f16 for rows that are not a multiple of 32), everything else
# (norms, biases, position and class embeddings, query tokens, relative
# biases) f32.  The README's "Models" table comes from it:
#     python3 bench/model_sizes.py tests/golden/real/*.config.effective-4.37.2.json
# Checked against files blip2-convert wrote (bench/RESULTS.md, 2026-11-27 03:46 and 02:30):
# opt-2.7b f16 7 506 230 656 bytes, q8_0 3818 MiB; flan-t5-xl bf16 7523
# MiB, q8_0 4001 MiB (headers and alignment add < 0.1 %).
import json, sys
def count(c):
    mats, other = [], 0   # mats: (rows, cols) typed matrices; other: f32 values
    v = c['vision_config']; D=v['hidden_size']; I=v['intermediate_size']; L=v['num_hidden_layers']
    P=v['patch_size']; S=v['image_size']; T=(S//P)**2+1
    mats.append((D, 3*P*P)); other += D + D + T*D + 2*D
    for _ in range(L):
        mats += [(3*D, D), (D, D), (I, D), (D, I)]; other += 2*D + D + 4*D + I + D
    q = c['qformer_config']; H=q['hidden_size']; QI=q['intermediate_size']; E=q['encoder_hidden_size']
    other += 2*H + c['num_query_tokens']*H
    for l in range(q['num_hidden_layers']):
        mats += [(H,H)]*4; other += 4*H + 2*H
        if l % q['cross_attention_frequency'] == 0:
            mats += [(H,H),(H,E),(H,E),(H,H)]; other += 4*H + 2*H
        mats += [(QI,H),(H,QI)]; other += QI + H + 2*H
    t = c['text_config']
    if t.get('model_type') == 'opt':
        Dt=t['hidden_size']; F=t['ffn_dim']; V=t['vocab_size']
        mats.append((V, Dt)); other += (t['max_position_embeddings']+2)*Dt + 2*Dt
        for _ in range(t['num_hidden_layers']):
            mats += [(Dt,Dt)]*4 + [(F,Dt),(Dt,F)]; other += 4*Dt + 4*Dt + F + Dt
        if not t.get('tie_word_embeddings', True): mats.append((V, Dt))
    else:
        Dt=t['d_model']; F=t['d_ff']; V=t['vocab_size']; A=t['num_heads']*t['d_kv']; nb=t['relative_attention_num_buckets']
        gated = t.get('feed_forward_proj','').startswith('gated')
        mats.append((V, Dt)); other += 2*nb*t['num_heads'] + 2*Dt
        ff = [(F,Dt),(F,Dt),(Dt,F)] if gated else [(F,Dt),(Dt,F)]
        for _ in range(t['num_layers']): mats += [(A,Dt),(A,Dt),(A,Dt),(Dt,A)] + ff; other += 2*Dt
        for _ in range(t['num_decoder_layers']): mats += [(A,Dt),(A,Dt),(A,Dt),(Dt,A)]*2 + ff; other += 3*Dt
        if not t.get('tie_word_embeddings', True): mats.append((V, Dt))
    mats.append((Dt, H)); other += Dt
    return mats, other
for f in sys.argv[1:]:
    c = json.load(open(f))
    mats, other = count(c)
    nm = sum(r*k for r,k in mats); n = nm + other
    q8 = sum(r*k//32*34 if k % 32 == 0 else r*k*2 for r,k in mats) + other*4
    print(f.split('/')[-1], 'params %.3f G' % (n/1e9),
          'f32 %.2f GB' % (n*4/1e9), 'f16/bf16 %.2f GB' % ((nm*2+other*4)/1e9), 'q8_0 %.2f GB' % (q8/1e9))
