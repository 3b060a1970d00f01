"""IntentClassifier: what a customer's message wants, one of

===========  ===============================================================
faq          a factual question about the business, its products or policies
             (hours, location, what is included, payment methods)
booking      book, reschedule or cancel an appointment or a reservation
sales        interest in buying: prices, plans, quotes, stock, discounts
support      a problem with something already bought, booked or owned
             (broken, not working, refund of a purchase, account access)
escalation   wants a human or a manager, escalates a complaint, threatens to
             leave, to complain or to take legal steps
other        greetings, thanks, small talk, off-topic questions
===========  ===============================================================

with a confidence 0..1, in English, Spanish, French, German and Portuguese.

Two layers:

1. **Rules** (:func:`classify_rules`): regular expressions over the folded
   message (lower-case, no accents), each with a weight; an intent's
   evidence ``e`` is the sum of the weights of its patterns that match (each
   pattern once). "other" cues (greetings, thanks) count for 40% when another
   intent has evidence of at least 1 ("Hi, I'd like to book..." is booking).
   A message without cues is "faq" when it is a question and "other" when not.
   ``other`` always has a prior of 0.3.
2. **Prototypes**: when the classifier has an embedder (Universal Sentence
   Encoder multilingual; its vectors put the five languages in one space),
   the message's vector is compared with a small built-in set of example
   utterances per intent (:data:`PROTOTYPES`, embedded once per classifier,
   on first use). An intent's similarity ``s`` is the mean of its two best
   cosine similarities.

Rules alone: ``p = softmax(RULE_SHARPNESS * e)``. With prototypes:
``p = softmax(RULE_WEIGHT * e + SIMILARITY_WEIGHT * s)`` (without the
rules' no-cue fallback, so a message no rule understands is left to the
prototypes): one typical keyword (weight 1.5-2) moves the logits about as
much as 0.15-0.2 of cosine similarity, so a clear keyword beats a vague
neighbour and a close paraphrase beats a stray keyword. The intent with the
highest ``p`` wins and ``p`` is the confidence. The ratio of the two weights
gives both layers the same spread across intents on the training messages
(mean standard deviation 1.2 for the evidence, 0.12 for the similarity): it
needs no labels, whereas fitting it to labels would favour the rules, which
were written against those very messages. ``python bench/intent_eval/run.py``
reports both layers on a held-out split: the rules alone generalise poorly
(~57%), rules + prototypes reach ~88%.

The pipeline already embeds each message with the multilingual model for
retrieval and passes that vector to :meth:`IntentClassifier.classify`, so the
prototype layer costs one (121 x 512) matrix-vector product (a few
microseconds) and no model call; a vector of another size is ignored and the message is embedded
again. The rules take ~0.07 ms (p95 ~0.12 ms) thanks to a prefilter that
skips the ~87% of patterns that cannot match (see ``_grams``).
"""

from __future__ import annotations

import importlib
import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from fenlo_server.pipeline.analysis.prototypes import Prototypes
from fenlo_server.pipeline.analysis.types import Intent, IntentKind
from fenlo_server.text.words import fold

if TYPE_CHECKING:
    from fenlo_server.knowledge.types import Embedder, Matrix, Vector

log = logging.getLogger("fenlo.pipeline.intent")

INTENTS: tuple[IntentKind, ...] = get_args(IntentKind)
OTHER_PRIOR = 0.3  # evidence "other" always has
OTHER_DAMPING = 0.4  # other cues count this much when another intent has evidence >= 1
FALLBACK = 0.8  # rules only: evidence for faq (a question) or other when nothing matched
LONG_MESSAGE = 8  # words: in a longer message a greeting or a thanks is politeness
RULE_SHARPNESS = 1.5  # rules only: p = softmax(RULE_SHARPNESS * evidence)
RULE_WEIGHT = 1.0  # with prototypes: logits = RULE_WEIGHT * evidence ...
SIMILARITY_WEIGHT = 10.0  # ... + SIMILARITY_WEIGHT * similarity
TOP_PROTOTYPES = 2  # an intent's similarity: the mean of its best TOP_PROTOTYPES cosines
MAX_REASONS = 6

_W = r"[a-z]+"  # any folded word

# (intent, weight, pattern) over folded text. Weights: 2.5-3 unmistakable, 1.5-2 a clear
# cue, 0.5-1 a hint that needs company.
# fmt: off
_RULES: list[tuple[IntentKind, float, str]] = [
    # ---------------------------------------------------------------- escalation
    ("escalation", 3.0, r"\b(speak|talk|chat)(ing)? (to|with) (a |an |some |the |your )?"
     r"(real |actual |live |human )?(person|human|someone|somebody|agent|manager|supervisor|"
     r"representative|rep|employee|owner|boss)"),
    ("escalation", 2.5, r"\b(real|actual|live) (person|human|agent|employee|people)\b"),
    ("escalation", 2.5, r"\bhumans?\b(?! resources)"),
    ("escalation", 2.0, r"\b(manager|supervisor|boss|someone in charge|person in charge|"
     r"who is in charge|owner)\b"),
    ("escalation", 2.0, r"\b(put|transfer|connect)( me)? (through|to)\b"),
    ("escalation", 2.0, r"\bnot (a|with a|an?) (bot|robot|machine)\b|"
     r"\b(automated|bot) (replies|answers)"),
    ("escalation", 2.5, r"\b(formal complaint|file a complaint|make a complaint|complain|"
     r"complaining)\b"),
    ("escalation", 2.5, r"\b(lawyer|attorney|legal action|sue you|solicitor)\b"),
    ("escalation", 2.0, r"\breport (you|this)\b|\bconsumer (protection|rights)\b|"
     r"\btrading standards"),
    ("escalation", 2.5, r"\b(dispute|chargeback)\b"),
    ("escalation", 3.0, r"\bescalat"),
    ("escalation", 2.0, r"\b(competitor|take my business elsewhere|going elsewhere)\b"),
    ("escalation", 2.0, r"\b(cancel|cancell?ing|close|closing) (my|our) (account|subscription|"
     r"membership|contract)\b"),
    ("escalation", 2.0, r"\b(leave|leaving|write|writing|post|posting) (a )?(bad |negative |"
     r"one.star |1.star )?review"),
    ("escalation", 1.5, r"\b(third|fourth|fifth) time\b|"
     r"\b(nobody|no one) (has|is|gets|got|ever)\b"),
    ("escalation", 1.5, r"\b(done waiting|fed up|had enough|enough is enough|enough with)\b"),
    ("escalation", 1.5, r"\b(\d+|several|many|multiple) (emails|calls|messages|times)\b"),
    ("escalation", 1.0, r"\b(unacceptable|a joke|ridiculous|disgrace)\b"),
    ("escalation", 1.0, r"\bunless (someone|somebody|you)\b|\b(call|get back to) me( back)?\b"),
    ("escalation", 2.0, r"\b(whoever (runs|owns|is in charge)|"
     r"someone (senior|more senior|higher up)|higher up|(a|the) person\b|owner|ombudsman|"
     r"regulator|harass\w*)"),
    ("escalation", 2.0, r"\b(post|posting|posted|share|sharing|tell everyone) (this |it )?"
     r"(about|on|online)|\b(google|facebook|trustpilot|yelp|tripadvisor|instagram|"
     r"social media|twitter)\b"),
    ("escalation", 2.0, r"\b(another|a different|a new|other) (dentist|salon|clinic|company|"
     r"provider|shop|store|restaurant|gym|supplier|bank)\b|\b(elsewhere|somewhere else|taking my "
     r"(business|family|money|custom))\b"),
    ("escalation", 2.0, r"\b(not paying|won.?t pay|refuse to pay|stop paying|"
     r"not (paying|giving you) another)\b"),
    ("escalation", 1.5, r"\b(canned|scripted|copy.paste|automatic|automated|chatbot|bot)\b"),
    ("escalation", 1.5, r"\b(official|formal|written) complaint|\bcomplaint\b|\bforget it\b"),
    # es
    ("escalation", 3.0, r"\bhablar con (una |un |alguien|el |la |algun )?(persona|humano|agente|"
     r"encargad|responsable|gerente|supervisor|real)"),
    ("escalation", 2.0, r"\b(encargad[oa]|gerente|responsable|supervisor[a]?|jefe)\b"),
    ("escalation", 2.0, r"\bno con una (maquina|robot)|\b(pase|paseme|pasame|paseme) con\b"),
    ("escalation", 2.5, r"\b(reclamacion|hoja de reclamaciones|queja formal|poner una queja|"
     r"denunci|abogado)"),
    ("escalation", 2.0, r"\bme doy de baja\b|\bdarme de baja\b"),
    ("escalation", 2.0, r"\b(dueno|duena|propietario|exijo|carne y hueso|persona real|"
     r"una persona|alguien real|redes sociales|consumo|verguenza|otra (empresa|clinica|tienda))\b"),
    # fr
    ("escalation", 3.0, r"\bparler a (un |une |quelqu.un|le |la |votre )?(conseiller|humain|"
     r"personne|responsable|manager|directeur|superieur|vrai)"),
    ("escalation", 2.0, r"\b(responsable|superieur|directeur|humain|humaine)\b"),
    ("escalation", 2.5, r"\b(plainte|avocat|reclamation officielle)\b"),
    ("escalation", 2.0, r"\bpassez.moi\b|\b(troisieme|quatrieme) fois\b"),
    ("escalation", 1.0, r"\b(inadmissible|inacceptable|scandaleux)\b"),
    ("escalation", 2.0, r"\b(resilier|resilie) (mon|l)"),
    ("escalation", 2.0, r"\b(proprietaire|patron|mediateur|interlocuteur|j.exige|exige|"
     r"pas un robot|pas une machine|une vraie personne|reseaux sociaux|rappelle|"
     r"rappeler|repondez|une autre (clinique|entreprise|boutique))\b"),
    # de
    ("escalation", 3.0, r"\bmit (einem|einer|ihrem|ihrer|dem|der|einem echten) ?(echten )?"
     r"(mitarbeiter|mitarbeiterin|menschen|mensch|person|vorgesetzten|chef|manager|"
     r"geschaftsfuhrer|verantwortlichen)"),
    ("escalation", 2.0, r"\b(vorgesetzte|vorgesetzten|chef|geschaftsfuhrer|geschaftsleitung|"
     r"mitarbeiter|menschen)\b"),
    ("escalation", 2.5, r"\b(beschwer|anwalt|rechtliche schritte|verbraucherzentrale)"),
    ("escalation", 2.0, r"\bverbinden sie mich\b|\bkundige\b|\b(dritte|vierte)n? mal\b"),
    ("escalation", 1.0, r"\b(unverschamt|inakzeptabel|frechheit)\b"),
    ("escalation", 2.0, r"\b(inhaber|inhaberin|verlange|fordere|am telefon|echten|"
     r"kein (bot|roboter)|(dritte|vierte)\w* (nachricht|mail|email)|schlichtungsstelle|"
     r"bewertung|andere[nmr]? (praxis|firma|anbieter|laden))\b"),
    # pt
    ("escalation", 3.0, r"\bfalar com (um |uma |o |a |alguem|algum )?(atendente|humano|pessoa|"
     r"gerente|responsavel|supervisor|real)"),
    ("escalation", 2.0, r"\b(gerente|supervisor|responsavel|humano)\b"),
    ("escalation", 2.5, r"\b(reclamacao|reclamar|procon|reclame aqui|advogado|processar)"),
    ("escalation", 2.0, r"\b(me passa|passe|transfira)( me)? (para|pro|com)\b"),
    ("escalation", 2.0, r"\bcancelar (minha|a minha) (conta|assinatura)\b"),
    ("escalation", 2.0, r"\b(dono|dona|exijo|de verdade|nao com robo|robo|acionar|justica|"
     r"redes sociais|outra (empresa|clinica|loja)|absurdo|pessoa real)\b"),
    # ------------------------------------------------------------------- booking
    ("booking", 2.5, r"\b(book|booked|booking) (a|an|me|us|my|our|for|with|the|two|three|four|"
     r"five|six|\d)\b"),
    ("booking", 1.0, r"\bbook(ing)?\b"),
    ("booking", 2.0, r"\b(reserve|reservation|appointment|appt)\b"),
    ("booking", 2.5, r"\breschedul|\b(re.?book|rearrange)"),
    ("booking", 2.0, r"\bcancel (my|our|the|this|that|today.?s|tomorrow.?s) ?(\w+ )?"
     r"(appointment|booking|reservation|table|session|class|visit|lesson)"),
    ("booking", 2.0, r"\b(slot|slots|spot|opening|openings)\b"),
    ("booking", 2.0, r"\b(times?|slots?|spots?|openings?) (are |is )?(free|available|open|left)\b"),
    ("booking", 1.5, r"\bavailability\b|\b(are you|you) (free|available)\b"),
    ("booking", 2.5, r"\b(fit|squeeze) (me|us|him|her) in\b|\bbook (me|us) in\b"),
    ("booking", 1.5, r"\b(move|push|bring forward|shift) (my|our|the|it)\b|\bpush (it )?back\b"),
    ("booking", 1.5, r"\b(won.?t|can.?t|cannot) make it\b|\binstead\b"),
    ("booking", 2.0, r"\b(table|party|group) (for|of) (\d+|two|three|four|five|six|seven|eight)\b"),
    ("booking", 1.0, r"\b(\d+|two|three|four|five|six|seven|eight|ten) (people|persons|guests)\b"),
    ("booking", 1.5, r"\b(under the name|check.?up)\b"),
    ("booking", 2.0, r"\b(see me|see us|fit (me|us) in|put (me|us) down|pencil (me|us) in|"
     r"come (in|by|over)|drop (in|by)|pop in|take me off|sign me up for|get (my|our) \w+ done|"
     r"bump|running late|be late|rebook|same time)\b"),
    ("booking", 1.5, r"\b(room|table|lesson|class|session|haircut|cut|trim|colou?r|nails|manicure|"
     r"pedicure|massage|facial|cleaning|eye test|check.?up|consultation|visit|treatment) "
     r"(free|available|for (tonight|tomorrow|today|\d|two|three|four|monday|tuesday|wednesday|"
     r"thursday|friday|saturday|sunday|next))"),
    # es
    ("booking", 2.5, r"\b(reservar|reserva|reservacion|cita|citas)\b"),
    ("booking", 2.0, r"\b(hueco|turno)\b|\bmesa para\b"),
    ("booking", 1.5, r"\b(cambiar|mover|anular|cancelar) (mi|la|el) (cita|reserva|hora|turno)"),
    ("booking", 2.0, r"\b(pasar|ir|venir) (manana|hoy|el|esta|por)|\b(apuntar|apuntarme|"
     r"ampliar la reserva|hora para|seremos|somos \d+)\b"),
    # fr
    ("booking", 2.5, r"\b(reserver|reservation|rendez.vous|rdv)\b"),
    ("booking", 2.0, r"\b(decaler|reporter|creneau|creneaux)\b|\bune table\b"),
    ("booking", 1.5, r"\bannuler (ma|mon|la|le) (reservation|rendez|rdv|table|seance)"),
    ("booking", 2.0, r"\b(venir|passer) (lundi|mardi|mercredi|jeudi|vendredi|samedi|dimanche|"
     r"demain|ce|cet|aujourd)|\b(inscrire|nous serons|on sera)\b"),
    # de
    ("booking", 2.5, r"\b(termin|termine|terminen|reservier\w*|buchen|buchung)\b"),
    ("booking", 2.0, r"\b(verschieben|verlegen|stornier\w*)\b|\btisch fur\b"),
    ("booking", 2.0, r"\b(platz fur|platz frei|schaffe es|absagen|vorbeikommen|vorbeischauen|"
     r"einen tisch|anmelden fur|gehen wir auf|auf (montag|dienstag|mittwoch|donnerstag|freitag|"
     r"samstag|sonntag))\b"),
    # pt
    ("booking", 2.5, r"\b(marcar|agendar|remarcar|reservar|reserva|agendamento)\b"),
    ("booking", 1.5, r"\b(consulta|meu horario|um horario|uma mesa)\b"),
    ("booking", 2.0, r"\b(encaixar|desmarcar|cancelar a aula|vaga (para|pra) (hoje|amanha)|"
     r"passar ai|ir ai|seremos)\b"),
    # when: a hint of booking (weekdays, today/tomorrow, clock times)
    ("booking", 0.6, r"\b(today|tomorrow|tonight|next week|this week(end)?|monday|tuesday|"
     r"wednesday|thursday|friday|saturday|sunday|hoy|manana|esta noche|semana que viene|"
     r"proxima semana|lunes|martes|miercoles|jueves|viernes|sabado|domingo|aujourd.hui|demain|"
     r"ce soir|semaine prochaine|lundi|mardi|mercredi|jeudi|vendredi|samedi|dimanche|heute|"
     r"morgen|nachste woche|montag|dienstag|mittwoch|donnerstag|freitag|samstag|sonntag|hoje|"
     r"amanha|semana que vem|segunda|terca|quarta|quinta|sexta)\b"),
    ("booking", 0.6, r"\b\d{1,2}([:.h]\d{2})? ?(am|pm|h|uhr)\b|\b(a las|vers|um|as) \d{1,2}\b"),
    # --------------------------------------------------------------------- sales
    ("sales", 2.5, r"\bhow much\b|\b(price|prices|pricing|cost|costs|quote|quotation|estimate)\b"),
    ("sales", 2.0, r"\b(discount|discounts|promo|promos|promotion|promotions|coupon|deal|deals|"
     r"offer for|special offer|rates?)\b"),
    ("sales", 2.0, r"\b(buy|purchase|purchasing|do you sell|sell)\b"),
    ("sales", 2.0, r"\b(in stock|out of stock|back in stock)\b"),
    ("sales", 1.5, r"\b(order one|order an?|to order|place an order)\b"),
    ("sales", 2.0, r"\b(interested in|sign up|signing up|subscribe|upgrade|upgrading|free trial|"
     r"trial)\b"),
    ("sales", 1.0, r"\b(plans?|package|packages|licen[cs]es?|seats?|per (month|user|year)|"
     r"monthly|annual|yearly|membership|gift cards?|for sale|compar)"),
    ("sales", 1.0, r"\b(cheaper|cheapest|affordable|budget|expensive)\b"),
    ("sales", 2.0, r"\b(set me back|ballpark|a figure|fee|fees|price.?match|tier|instal+ments?|"
     r"payment plan|\d+.for.\d+|\d+ ?% off|bulk|wholesale|nonprofit|non.profit|grab (one|two|a)|"
     r"want (one|two|a couple)|gift (card|voucher|certificate)s?|financing|worth it)\b"),
    # es
    ("sales", 2.5, r"\bcuanto (cuesta|cuestan|vale|valen|cobran|sale|es)\b|\b(precio|precios|"
     r"presupuesto|cotizacion|tarifa|tarifas)\b"),
    ("sales", 2.0, r"\b(descuento|oferta|ofertas|promocion|comprar|compra|me interesa|"
     r"contratar)\b"),
    ("sales", 1.0, r"\b(planes|licencias|suscripcion|mensual|anual)\b"),
    ("sales", 2.0, r"\b(a cuenta|sale mas|bono|tarjetas? regalo|regalar|cheque regalo|"
     r"plazos|mas barato|econom\w+)\b"),
    # fr
    ("sales", 2.5, r"\bcombien\b|\b(prix|tarif|tarifs|devis|cout|coute)\b"),
    ("sales", 2.0, r"\b(reduction|remise|promo|promotion|acheter|achat|interesse|souscrire|"
     r"abonner|offre)\b"),
    ("sales", 1.0, r"\b(abonnement|formule|licences|mensuel|annuel|version)\b"),
    ("sales", 2.0, r"\b(prix|moins cher|forfaits?|carte cadeau|cheque cadeau|en plusieurs fois|"
     r"faites des prix|tarif de groupe)\b"),
    # de
    ("sales", 2.5, r"\b(was kostet|kostet|kosten|preis|preise|angebot|kostenvoranschlag|tarif)\b"),
    ("sales", 2.0, r"\b(rabatt|aktion|kaufen|bestellen|vorratig|lieferbar|interessiere|"
     r"abschliessen|upgraden)\b"),
    ("sales", 1.0, r"\b(lizenzen|abo|jahrlich|monatlich|paket)\b"),
    ("sales", 2.0, r"(rabatt|preis|kosten|kostet|angebot)\w*\b|\b(lizenzier\w*|gutschein kaufen|"
     r"ratenzahlung|gunstiger|billiger)\b"),
    # pt
    ("sales", 2.5, r"\bquanto (custa|custam|sai|e)\b|\b(preco|precos|orcamento|proposta|valor|"
     r"cotacao)\b"),
    ("sales", 2.0, r"\b(desconto|promocao|oferta|comprar|compra|interesse|assinar|contratar)\b"),
    ("sales", 1.0, r"\b(plano|planos|a vista|parcel|mensalidade|anual)\b"),
    ("sales", 2.0, r"\b(pacote|ingressos?|vale.presente|mais barato|parcelar|parcelado|"
     r"sai por)\b"),
    # ------------------------------------------------------------------- support
    ("support", 2.5, r"\b(can.?t|cannot|can not|unable to|couldn.?t) (log|sign|access|get into|"
     r"login|open|use|download|connect|pay|see)"),
    ("support", 2.0, r"\b(log ?in|login|sign in|password|2fa|two.factor|authentication|"
     r"verification code|locked out)\b"),
    ("support", 2.5, r"\b(not|isn.?t|aren.?t|doesn.?t|don.?t|won.?t|stopped|stop) (working|work|"
     r"load|loading|open|opening|turn on|start|charge|charging|sync|syncing)\b"),
    ("support", 2.5, r"\b(broken|broke|damaged|defective|faulty|crash|crashes|crashing|crashed|"
     r"error|bug|glitch|freezes|frozen)\b"),
    ("support", 2.5, r"\b(charged (me )?twice|double.charged|overcharged|charged (me )?the wrong|"
     r"wrong (amount|charge|size|item|colou?r|order|product|address))\b"),
    ("support", 2.0, r"\b(refund|money back|exchange|replacement|return (it|this|them|the))\b"),
    ("support", 2.0, r"\b(never (got|received|arrived|came)|hasn.?t (arrived|come|shown up|been)|"
     r"still hasn.?t|still not|has not arrived|didn.?t (get|receive|arrive)|where is my|"
     r"supposed to (arrive|be))\b"),
    ("support", 2.0, r"\b(declined|expired|not (being )?accepted|isn.?t (being )?accepted|"
     r"invalid|missing|lost my|stolen)\b"),
    ("support", 2.0, r"\b(fell out|fell off|came off|came loose|cracked|itchy|rash|sore|hurts|"
     r"pain|swollen|bleeding|allergic reaction|burn|burned)\b"),
    ("support", 2.0, r"\b(failed|fails|keeps (crashing|failing|logging|asking|saying)|reset|"
     r"doesn.?t (let|show)|won.?t let)\b"),
    ("support", 1.0, r"\b(my|our) (order|package|parcel|delivery|account|invoice|bill|"
     r"subscription|card|voucher|device|phone)\b|\b(bought|purchased|ordered|received)\b"),
    ("support", 1.0, r"\bafter (my|the) (appointment|treatment|visit|cleaning|procedure)\b|"
     r"\b(problem|issue|trouble) with\b"),
    ("support", 2.0, r"\b(blank|spins|never loads|loose|leak\w*|vomit\w*|sick|overheat\w*|"
     r"delivered but|nothing (at|in) (my|the)|debited|since the (update|upgrade|vaccine|"
     r"treatment|visit)|not (receiving|received)|didn.?t (work|help)|what now|instead of "
     r"(a|the|my)|wrong(?! (chat|number|person|conversation|window))|incorrect|"
     r"doesn.?t match|stuck|disappeared|deleted|smells?)\b"),
    # es
    ("support", 2.5, r"\bno (puedo|consigo) (acceder|entrar|iniciar|conectar|pagar|abrir|usar)|"
     r"\bno (me )?funciona|\bno (ha llegado|llega|llego)|\bno carga\b"),
    ("support", 2.5, r"\b(roto|rota|rotos|averiad|defectuos|estropead|dañad|danad)"),
    ("support", 2.0, r"\b(reembolso|devolucion|devuelvan|me cobraron|cobrado|cobraron|"
     r"contrasena|error|fallo)\b|\bdos veces\b"),
    ("support", 1.0, r"\b(mi|el) (pedido|cuenta|factura|paquete)\b"),
    ("support", 2.0, r"\b(equivocad[oa]|incorrect[oa]|se calienta|no (me )?llega|no recib\w+|"
     r"falta|faltan|desaparec\w+|se (rompio|estropeo|apaga|cuelga)|compre|me llego)\b"),
    # fr
    ("support", 2.5, r"\b(n.?arrive pas|ne fonctionne|fonctionne pas|marche pas|ne marche|"
     r"impossible de|plante|bug|bloque)\b"),
    ("support", 2.5, r"\b(defectueu|casse|cassee|abime|endommag|jamais arrive|pas recu|"
     r"jamais recu)"),
    ("support", 2.0, r"\b(rembours\w*|mot de passe|connecter|debite|preleve|deux fois|erreur)\b"),
    ("support", 1.0, r"\b(ma|mon) (commande|compte|facture|colis|abonnement)\b"),
    ("support", 2.0, r"\b(ne recois|recois pas|vire|manque|incorrect\w*|depuis la mise a jour|"
     r"ne s.allume|ne charge|ecran (blanc|noir)|fuit|fuite)\b"),
    # de
    ("support", 2.5, r"\b(funktioniert nicht|funktioniert (\w+ )?nicht mehr|geht nicht|kaputt|"
     r"defekt|beschadigt|sturzt ab|absturz|fehler|nicht angekommen|nicht erhalten)"),
    ("support", 2.0, r"\b(erstattung|zuruckerstatt|ruckerstatt|abgebucht|passwort|einloggen|"
     r"anmelden|doppelt|umtausch|reklamation)\w*"),
    ("support", 1.0, r"\b(mein|meine|meinen) (bestellung|konto|rechnung|paket|lieferung)\b|"
     r"\b(lieferung|synchronisierung)\b"),
    ("support", 2.0, r"\b(ungultig|seit dem update|weisse[nr]? bildschirm|bildschirm|zeigt (nur|"
     r"nichts)|fehlt|falsch\w*|undicht|lauft aus|reagiert nicht|nicht mehr|erhalte keine|"
     r"keine (mail|email|bestatigung)|gekauft|bestellt)\b"),
    # pt
    ("support", 2.5, r"\bnao (consigo|consegui) (entrar|acessar|logar|pagar|abrir|usar)|"
     r"\bnao (esta )?funciona|\bnao chegou|\bveio (com defeito|quebrad|errad)"),
    ("support", 2.5, r"\b(defeito|quebrad[oa]|estragad[oa]|danificad[oa])\b"),
    ("support", 2.0, r"\b(reembolso|estorno|devolucao|cobrad[oa]|cobraram|senha|erro|"
     r"duas vezes)\b"),
    ("support", 1.0, r"\b(meu|minha) (pedido|conta|fatura|cartao|encomenda)\b"),
    ("support", 2.0, r"\b(faltando|falta|ainda mostra|paguei|comprei|errad[oa]|nao recebi|"
     r"nao chegou|travou|trava|vazando|sumiu|boleto)\b"),
    # ----------------------------------------------------------------------- faq
    ("faq", 2.0, r"\bwhat time (do|does|are|is (the|your))\b|\b(opening|business) (hours|times)\b"),
    ("faq", 2.0, r"\b(are you|is (the|your) \w+) (open|closed)\b|\bdo you (open|close)\b|"
     r"\bhours\b"),
    ("faq", 2.0, r"\bwhere (is|are) (you|the|your)\b|\b(located|location|address|directions)\b|"
     r"\bhow (do|can) i get to\b"),
    ("faq", 1.5, r"\b(parking|park)\b|\bwheelchair|\baccessib"),
    ("faq", 2.0, r"\bdo you (accept|take|ship|deliver|allow|cater)\b"),
    ("faq", 1.0, r"\bdo you (offer|do|provide|have)\b"),
    ("faq", 1.5, r"\b(accept(ed)? (credit|cards?|cash|insurance|paypal)|payment methods?|"
     r"insurance|ship|shipping|deliver|delivery to)\b"),
    ("faq", 2.0, r"\b(what.?s|what is|what does|is|are) (\w+ )?included\b|\binclud(e|es)\b"),
    ("faq", 2.0, r"\b(policy|policies|allowed|permitted|walk.?ins?|appointment only|in advance)\b"),
    ("faq", 1.5, r"\b(vegetarian|vegetarians|vegan|gluten|allerg\w*|halal|kosher|suitable for|"
     r"kids|children|pets?|dogs? (allowed|welcome)|dog.friendly|pet.friendly)\b"),
    ("faq", 2.0, r"\b(minimum age|age limit|dress code|contain|contains|ingredients|nuts|heated|"
     r"cover|covers|covered|wifi|wi.fi|changing rooms?|showers?|lockers?|how far|from the airport|"
     r"can (my|i|we) (bring|wait|stay|use|come with))\b"),
    ("faq", 1.0, r"^\W*(is|are) there\b"),
    ("faq", 1.5, r"\bhow long (does|do|is|will)\b|\bcan i bring\b|\bdo i need\b|"
     r"\b(integrate|integration|compatible)\b"),
    # es
    ("faq", 2.5, r"\ba que hora\b|\bhorarios?\b|\b(abren|cierran|abierto|abiertos)\b"),
    ("faq", 2.0, r"\bdonde (estan|esta|queda|se encuentra)|\b(direccion|ubicad[oa]s?|"
     r"aparcamiento|parking)\b"),
    ("faq", 1.5, r"\b(aceptan|admiten|incluye|incluyen|hacen|envian|tienen opciones|"
     r"se puede)\b"),
    ("faq", 2.0, r"\b(hasta que hora|a partir de que hora|pueden entrar|perros|mascotas|"
     r"se admiten|pagar con tarjeta|wifi|duchas|edad minima)\b"),
    # fr
    ("faq", 2.5, r"\b(horaires?|ouverture|ouvert|ouverts|fermez|fermes)\b"),
    ("faq", 2.0, r"\bou (se trouve|etes|est)\b|\b(adresse|parking|stationnement)\b"),
    ("faq", 1.5, r"\b(acceptez|livrez|livraison|inclus|incluse|compris|proposez)\b"),
    ("faq", 2.0, r"\b(comprend|ouverts?|chiens|animaux|age minimum|payer par carte|douches|"
     r"jours feries|est.ce que vous)\b"),
    # de
    ("faq", 2.5, r"\b(offnungszeiten|geoffnet|offen|oeffnungszeiten)\b"),
    ("faq", 2.0, r"\bwo (ist|befindet|finde|liegt)\b|\b(adresse|parkplatz|parkplatze|anfahrt)\b"),
    ("faq", 1.5, r"\b(gibt es|akzeptieren|nehmen sie|liefern sie|inklusive|enthalten|vegan\w*|"
     r"vegetarisch\w*)\b"),
    ("faq", 2.0, r"\b(barrierefrei|mit karte|kartenzahlung|bar zahlen|hunde|haustiere|duschen|"
     r"mindestalter|feiertag\w*|kann man)\b"),
    # pt
    ("faq", 2.5, r"\bhorario de (funcionamento|atendimento)|\b(abrem|fecham|abertos)\b|"
     r"(?<!em )\baberto\b"),
    ("faq", 2.0, r"\bonde (fica|ficam|esta|estao)\b|\b(endereco|estacionamento)\b"),
    ("faq", 1.5, r"\b(aceitam|inclui|incluso|entregam|fazem)\b"),
    ("faq", 2.0, r"\b(atendem|convenio|plano de saude|vestiario|chuveiro|cachorros?|animais|"
     r"idade minima|feriados?|tem (wifi|estacionamento|vestiario))\b"),
    # --------------------------------------------------------------------- other
    ("other", 1.5, r"^\W*(hi|hello|hey|hiya|good (morning|afternoon|evening)|hola|buenas|"
     r"buenos dias|bonjour|bonsoir|salut|coucou|hallo|guten (morgen|tag|abend)|servus|moin|"
     r"ola|oi|bom dia|boa (tarde|noite))\b"),
    ("other", 1.5, r"\b(thanks|thank you|thx|cheers|gracias|merci|danke|vielen dank|"
     r"obrigad[oa])\b"),
    ("other", 1.5, r"\b(bye|goodbye|see you|have a (great|good|nice)|hasta luego|hasta pronto|"
     r"adios|a bientot|au revoir|bonne journee|tschuss|schonen tag|bis bald|ate mais|tchau|"
     r"ate logo)\b"),
    ("other", 1.0, r"^\W*(ok|okay|cool|great|perfect|alright|lol|haha|nice|vale|perfecto|"
     r"d.accord|parfait|alles klar|super|beleza|perfeito|certo|top|passt|sorted|fine)\b"),
    ("other", 2.0, r"\b(how are you|que tal|como estas|ca va|comment allez|wie geht|tudo bem|"
     r"como vai)\b"),
    ("other", 2.5, r"\b(joke|weather|football|soccer|futbol|futebol|movie|film|song|"
     r"capital of|president of|wrong chat|wrong number|meaning of life)\b"),
    ("other", 2.5, r"\bwhat time is it\b|\bwie spat ist es\b|\bque hora es\b|"
     r"\bquelle heure est.il\b|\bque horas sao\b|\bwetter\b|\btiempo hace\b|\bmeteo\b"),
    ("other", 3.0, r"\bare you (a |an )?(robot|bot|human|real person|ai|machine)\b"),
    ("other", 2.0, r"\b(happy (new year|holidays|easter|birthday)|merry christmas|feliz (navidad|"
     r"ano|natal|ano novo)|joyeux noel|bonne annee|frohe (weihnachten|ostern)|frohes neues)\b"),
    ("other", 2.0, r"\b(rain|raining|snow|sunny|llover|lluvia|pleuvoir|pluie|regnen|chover|chuva|"
     r"partido|game|score|jogo|spiel|what day is it|que dia|quel jour|welcher tag|"
     r"\d+ ?% of|funny|oops|meant to send|valeu|haha\w*|lol)\b|^\W*(yo|sup)\W*$"),
]
# fmt: on

_QUESTION = re.compile(
    r"\?|^\W*(what|when|where|which|who|why|how|is|are|do|does|can|could|qu[ae]|cual|cuando|"
    r"donde|como|quel|quelle|quand|ou|comment|est.ce|was|wann|wo|wie|welche|gibt|qual|quando|"
    r"onde)\b"
)


@dataclass(frozen=True, slots=True)
class _Rule:
    intent: IntentKind
    weight: float
    pattern: re.Pattern[str]
    # Substrings of 2-3 characters of which every match holds at least one (None: unknown):
    # a rule none of whose grams is in the message cannot match and is not run.
    grams: frozenset[str] | None


# -- prefilter ------------------------------------------------------------------------
# Running ~180 regular expressions costs ~0.2 ms; most cannot match a given message. From
# each pattern's parse tree we take a set of literal strings every match must contain
# (e.g. {"cost", "costs", "colo"} for r"\b(cost|costs|colou?r)\b") and keep their first
# three (or two) characters; a rule runs only if one of them occurs in the message. The
# analysis is conservative: anything it does not understand makes the rule always run.
# It reads the standard library's private regular-expression parser; if that ever
# changes, every rule simply runs.

Items = Any  # a parsed (sub)pattern: a sequence of (opcode, argument)


def _prefixes(parser: Any, items: Items) -> set[str] | None:
    """Literal strings one of which every match of ``items`` starts with."""
    run: list[str] = []
    for op, av in items:
        if op is parser.LITERAL:
            run.append(chr(av))
            continue
        head = "".join(run)
        tails: set[str] | None
        if op is parser.SUBPATTERN:
            tails = _prefixes(parser, av[3])
        elif op is parser.BRANCH:
            tails = set()
            for branch in av[1]:
                found = _prefixes(parser, branch)
                if found is None:
                    tails = None
                    break
                tails |= found
        else:
            tails = None
        if tails is None:
            return {head} if head else None
        return {head + tail for tail in tails}
    head = "".join(run)
    return {head} if head else None


def _shortest(strings: set[str] | None) -> int:
    return min(map(len, strings)) if strings else 0


def _required(parser: Any, items: Items) -> set[str] | None:
    """Literal strings one of which every match of ``items`` contains."""
    best: set[str] | None = None

    def consider(candidate: set[str] | None) -> None:
        nonlocal best
        if candidate and _shortest(candidate) > _shortest(best):
            best = candidate

    after_literal = False
    for i, (op, av) in enumerate(items):
        if op is parser.LITERAL:
            if not after_literal:
                consider(_prefixes(parser, items[i:]))
            after_literal = True
            continue
        after_literal = False
        if op is parser.SUBPATTERN:
            consider(_prefixes(parser, items[i:]))
            consider(_required(parser, av[3]))
        elif op is parser.BRANCH:
            consider(_prefixes(parser, items[i:]))
            branches = [_required(parser, branch) for branch in av[1]]
            if all(branches):
                consider(set().union(*(b for b in branches if b)))
        elif op in (parser.MAX_REPEAT, parser.MIN_REPEAT) and av[0] >= 1:
            consider(_required(parser, av[2]))
    return best


def _grams(pattern: str) -> frozenset[str] | None:
    try:
        parser = importlib.import_module("re._parser")
        required = _required(parser, parser.parse(pattern))
    except Exception:  # another Python's internals: no prefilter
        return None
    if not required or _shortest(required) < 2:
        return None
    return frozenset(s[:3] for s in required)


def _text_grams(text: str) -> set[str]:
    grams = {text[i : i + 3] for i in range(len(text) - 2)}
    grams.update(text[i : i + 2] for i in range(len(text) - 1))
    return grams


RULES: tuple[_Rule, ...] = tuple(_Rule(i, w, re.compile(p), _grams(p)) for i, w, p in _RULES)

# Example utterances per intent, for the prototype layer; deliberately other businesses and
# other phrasings than the evaluation set (a gym, a hotel, a vet, a garage, a bakery ...).
PROTOTYPES: dict[IntentKind, tuple[str, ...]] = {
    "faq": (
        "What are your opening hours?",
        "Are you open on Sundays?",
        "Where is your office located?",
        "Is there parking near the gym?",
        "Do you accept cash or only cards?",
        "Is breakfast included with the room?",
        "Do you have options for people with allergies?",
        "How long does a typical session take?",
        "Do you deliver to my area?",
        "Are pets allowed in the hotel?",
        "What does the basic service cover?",
        "Do I need to bring anything to my first class?",
        "¿Cuál es el horario de la tienda?",
        "Où se trouve votre magasin ?",
        "Haben Sie am Wochenende geöffnet?",
        "Vocês fazem entregas no fim de semana?",
        "is the studio easy to reach by bus",
        "Does the price include VAT?",
        "Which brands of contact lenses do you carry?",
        "Can children come to the yoga classes?",
        "¿Se puede pagar con Bizum?",
    ),
    "booking": (
        "I'd like to make an appointment for next week.",
        "Can I reserve a room for two nights?",
        "Please book me a massage on Friday afternoon.",
        "I need to change the time of my appointment.",
        "I have to cancel my reservation for tonight.",
        "Do you have an opening tomorrow morning?",
        "Could I come in at 4pm instead of 2pm?",
        "Is there any free time with the vet this week?",
        "Can you move my session to Thursday?",
        "Table for three at 7:30, please.",
        "Quisiera pedir una cita para el lunes.",
        "Je voudrais réserver une chambre pour ce week-end.",
        "Kann ich einen Termin für nächste Woche bekommen?",
        "Quero agendar um horário para amanhã.",
        "can u squeeze me in for a trim before the weekend",
        "Could the mechanic look at my car on Wednesday morning?",
        "We'll be five instead of three tonight, can you adjust it?",
        "I'd like to sign up for the Tuesday evening pilates class.",
        "Ich möchte meinen Termin absagen.",
        "Je ne pourrai pas venir demain, on peut décaler ?",
    ),
    "sales": (
        "How much do you charge for a full service?",
        "What are your prices?",
        "Can I get a quote for the kitchen renovation?",
        "Are there any discounts for new customers?",
        "Which plan is the best value for a small team?",
        "I want to buy a yearly membership.",
        "Do you have this jacket in a medium? I'd like to purchase it.",
        "Is there a cheaper package?",
        "What's the cost per user per month?",
        "I'm thinking of signing up, do you have a free trial?",
        "¿Cuál es el precio del plan premium?",
        "Quel est le tarif pour un abonnement mensuel ?",
        "Wie viel kostet das Jahresabo?",
        "Qual o valor da mensalidade?",
        "what's the damage for a full detail on an SUV",
        "Do you offer bulk pricing for corporate orders?",
        "Can I pay in three monthly instalments?",
        "Is the summer sale still on?",
        "Ich hätte gern ein Angebot für die Renovierung.",
        "C'est combien pour un bouquet de mariée ?",
    ),
    "support": (
        "My order arrived broken.",
        "The app won't let me sign in.",
        "I forgot my password and the reset link doesn't work.",
        "I was billed the wrong amount.",
        "The product I bought doesn't turn on.",
        "I want my money back, the item is faulty.",
        "My delivery is late and the tracking shows nothing.",
        "The website shows an error when I try to pay.",
        "My tooth still hurts after the treatment.",
        "The coupon code I received isn't working.",
        "Mi pedido no ha llegado todavía.",
        "Mon application ne se synchronise plus.",
        "Ich kann mich nicht einloggen.",
        "Meu pedido veio errado.",
        "the washing machine you installed is leaking",
        "My screen went black after the last update.",
        "I paid but the order still says pending.",
        "The parcel shows delivered but I never got it.",
        "Die Rechnung hat einen falschen Betrag.",
        "Le chargeur ne fonctionne plus depuis hier.",
    ),
    "escalation": (
        "Let me talk to a real human being.",
        "I need to speak with a manager right now.",
        "Transfer me to a live agent.",
        "I'm extremely unhappy and want to make a formal complaint.",
        "This is ridiculous, I'll take my business elsewhere.",
        "I will take legal action if this isn't fixed.",
        "Nobody is helping me, who is in charge there?",
        "I'm going to leave a one-star review everywhere.",
        "Stop sending me bot answers, I want an employee.",
        "I've asked three times already, escalate my case.",
        "Quiero poner una queja con el gerente.",
        "Je veux parler à un responsable immédiatement.",
        "Ich will sofort mit einem Menschen sprechen.",
        "Quero falar com o supervisor agora.",
        "i'm done with this bot, put a person on",
        "I'll be telling everyone online how badly you treated me.",
        "Cancel everything, I'm going to a competitor.",
        "I want the owner to call me today.",
        "Das ist eine Frechheit, ich will den Chef sprechen.",
        "Je vais laisser un avis négatif partout.",
    ),
    "other": (
        "Hello!",
        "Hey, how are you?",
        "Thank you very much!",
        "Great, thanks.",
        "Goodbye, have a nice day.",
        "Okay.",
        "What's your favourite movie?",
        "Tell me something funny.",
        "Who is the president of France?",
        "Nice to meet you.",
        "¡Buenos días!",
        "Merci, c'est gentil.",
        "Guten Abend!",
        "Tchau, obrigado.",
        "lol",
        "Merry Christmas to you all!",
        "Do you think it will snow this weekend?",
        "What's the square root of 144?",
        "Sorry, that message wasn't for you.",
        "¿Quién ganó el mundial?",
    ),
}


def _normal(text: str) -> str:
    folded = text.lower() if text.isascii() else fold(text).replace("ß", "ss")
    return folded.replace("’", "'")


def _evidence(text: str, *, fallback: bool) -> tuple[dict[IntentKind, float], list[str]]:
    """Per-intent rule evidence and the reasons (matched words), strongest first.

    With ``fallback``, a message without cues leans to faq (a question) or other.
    """
    folded = _normal(text)
    evidence: dict[IntentKind, float] = dict.fromkeys(INTENTS, 0.0)
    found: list[tuple[float, str]] = []
    grams = _text_grams(folded)
    for rule in RULES:
        if rule.grams is not None and rule.grams.isdisjoint(grams):
            continue
        match = rule.pattern.search(folded)
        if match is not None:
            evidence[rule.intent] += rule.weight
            found.append((rule.weight, f"{rule.intent}: '{match.group(0).strip()}'"))
    strongest = max(v for k, v in evidence.items() if k != "other")
    if evidence["other"] and (strongest >= 1.0 or len(folded.split()) > LONG_MESSAGE):
        evidence["other"] *= OTHER_DAMPING  # "Hi, ..." is politeness, not the point
    if fallback and strongest < 1.0 and evidence["other"] < 1.0:
        if _QUESTION.search(folded):
            evidence["faq"] += FALLBACK
            found.append((FALLBACK, "faq: a question without other cues"))
        else:
            evidence["other"] += FALLBACK
            found.append((FALLBACK, "other: no intent cues"))
    evidence["other"] += OTHER_PRIOR
    found.sort(key=lambda item: -item[0])
    return evidence, [reason for _, reason in found]


def _softmax(logits: dict[IntentKind, float]) -> dict[IntentKind, float]:
    top = max(logits.values())
    exps = {k: math.exp(v - top) for k, v in logits.items()}
    total = sum(exps.values())
    return {k: v / total for k, v in exps.items()}


def _decide(
    logits: dict[IntentKind, float], reasons: list[str], extra: tuple[str, ...] = ()
) -> Intent:
    probabilities = _softmax(logits)
    kind = max(INTENTS, key=lambda k: probabilities[k])  # ties: the order of INTENTS
    ordered = [r for r in reasons if r.startswith(f"{kind}:")] + [
        r for r in reasons if not r.startswith(f"{kind}:")
    ]
    return Intent(
        kind,
        round(probabilities[kind], 3),
        (*ordered[: MAX_REASONS - len(extra)], *extra),
    )


def classify_rules(text: str) -> Intent:
    """The intent from the keyword rules alone (no model): fast and deterministic."""
    evidence, reasons = _evidence(text, fallback=True)
    return _decide({k: RULE_SHARPNESS * v for k, v in evidence.items()}, reasons)


class IntentClassifier:
    """Rules, plus nearest prototypes when an embedder is given (see the module doc).

    The prototypes are embedded with ``embedder`` on the first :meth:`classify`
    (or :meth:`warm`); concurrent first calls wait for the same embedding.
    Without an embedder, or if embedding fails, it classifies by the rules alone.
    """

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder = embedder
        self.prototypes: Prototypes[IntentKind] | None = (
            Prototypes(embedder, {kind: PROTOTYPES[kind] for kind in INTENTS})
            if embedder is not None
            else None
        )

    async def classify(self, text: str, vector: Vector | None = None) -> Intent:
        """The intent of ``text``. ``vector`` is the message's vector from the
        classifier's embedder (the multilingual model), when the caller already has it."""
        if self.embedder is None or self.prototypes is None:
            return classify_rules(text)
        try:
            matrix = await self.prototypes.matrix()
            if vector is None or vector.shape != (matrix.shape[1],):
                vector = await self.embedder.embed_query(text)
        except Exception:
            log.warning("intent prototypes unavailable, using rules only", exc_info=True)
            return classify_rules(text)
        evidence, reasons = _evidence(text, fallback=False)
        similarity, nearest = self._similarity(matrix, vector)
        logits = {k: RULE_WEIGHT * evidence[k] + SIMILARITY_WEIGHT * similarity[k] for k in INTENTS}
        best = max(INTENTS, key=lambda k: logits[k])
        example, cosine = nearest[best]
        return _decide(logits, reasons, (f"{best} prototype: '{example}' ({cosine:.2f})",))

    def similarities(self, vector: Vector) -> dict[IntentKind, float]:
        """Per-intent similarity of a message vector (after the first :meth:`classify`)."""
        matrix = self.prototypes.embedded if self.prototypes is not None else None
        if matrix is None:
            raise RuntimeError("the prototypes are embedded on the first classify()")
        return self._similarity(matrix, vector)[0]

    async def warm(self) -> None:
        """Embed the prototypes now (at start-up) rather than on the first message."""
        if self.prototypes is None:
            return
        try:
            await self.prototypes.matrix()
        except Exception:
            log.warning("could not embed the intent prototypes", exc_info=True)

    def _similarity(
        self, matrix: Matrix, vector: Vector
    ) -> tuple[dict[IntentKind, float], dict[IntentKind, tuple[str, float]]]:
        assert self.prototypes is not None
        similarity: dict[IntentKind, float] = {}
        nearest: dict[IntentKind, tuple[str, float]] = {}
        for kind, part, start in self.prototypes.cosines(matrix, vector):
            top = np.sort(part)[-TOP_PROTOTYPES:]
            similarity[kind] = float(top.mean())
            best = int(np.argmax(part))
            nearest[kind] = (self.prototypes.texts[start + best], float(part[best]))
        return similarity, nearest


_SHARED: dict[int, tuple[Embedder, IntentClassifier]] = {}


def shared(embedder: Embedder) -> IntentClassifier:
    """One classifier per embedder for the process, so its prototypes are embedded
    once (not once per pipeline configuration)."""
    entry = _SHARED.get(id(embedder))
    if entry is None or entry[0] is not embedder:
        entry = _SHARED[id(embedder)] = (embedder, IntentClassifier(embedder))
    return entry[1]
