"""The rules on folded text (lower case, whitespace collapsed to single spaces): instructions to the
agent in several languages, requests for credentials and money, the letters-only and markup rules,
urgency and role lines."""

from __future__ import annotations

import re

from gatewayd.pipeline.injection.rules import RuleIndex, rule

_W = r"(?:[a-z0-9'’-]+ )"  # one word and its space: gaps are {0,n}, so matching stays linear
_QUALIFIER = (
    r"(?:previous|prior|preceding|above|earlier|former|original|initial|existing|old|system|developer"
    r"|safety|all|your)"
)
_INSTR = r"(?:instructions?|prompts?|system prompt|directives?|guidelines|guardrails|programming|commands)\b"

_SECRET = (
    r"(?: own| current| full| admin)? (?:api[ -]?keys?|passwords?|passwd|passphrase|passcodes?|"
    r"pin(?: codes?)?|credentials|login(?: details| credentials| info)?|access (?:tokens?|keys?)|"
    r"auth(?:entication)? tokens?|bearer tokens?|secret keys?|private keys?|ssh keys?|seed phrase|"
    r"recovery (?:phrase|codes?)|mnemonic|2fa codes?|otp|one[- ]time (?:pass)?codes?|verification "
    r"codes?|security codes?|credit card(?: numbers?| details| info)?|card numbers?|bank "
    r"(?:details|account (?:details|numbers?)))\b"
)

WORD_RULES = (
    rule(
        "INJ_IGNORE_INSTRUCTIONS",
        "ignore ignores disregard disregards forget forgets override overrides bypass neglect follow obey",
        rf"(?:ignore|disregard|forget|override|bypass|neglect)s?\b {_W}{{0,4}}?{_QUALIFIER} {_W}{{0,2}}?"
        rf"{_INSTR}",
        r"(?:ignore|disregard|forget)\b (?:all|everything|anything|whatever) (?:[a-z']+ ){0,3}?"
        r"(?:above|before this|previously|you(?:'ve| have) been told|you were told)\b",
        r"do not (?:follow|obey) (?:the |your |any )?(?:previous|prior|above|original|system) "
        r"(?:instructions|rules|prompt)",
    ),
    rule(
        "INJ_IGNORE_INSTRUCTIONS",  # de
        "anweisungen instruktionen befehle anordnungen vorgaben",
        r"(?:ignorier|missacht|vergiss|vergessen|uberschreib)[a-z]{0,4} (?:[a-z]+ ){0,4}?"
        r"(?:vorherigen?|vorigen?|bisherigen?|obigen?|vorangegangenen?|fruheren?|alten|ursprunglichen?|"
        r"alle|deine|ihre)[a-z]{0,2} (?:[a-z]+ )?(?:anweisungen|instruktionen|befehle|anordnungen|vorgaben)",
        r"(?:vorherigen?|vorigen?|bisherigen?|obigen?|fruheren?|alle)[a-z]{0,2} (?:[a-z]+ )?"
        r"(?:anweisungen|instruktionen|befehle) (?:[a-z]+ ){0,2}?(?:ignorieren|vergessen|missachten)",
    ),
    rule(
        "INJ_IGNORE_INSTRUCTIONS",  # fr, es, it, pt, nl, pl
        "instructions instruction instrucciones istruzioni instrucoes instructies opdrachten instrukcje "
        "polecenia",
        r"(?:ignore[rsz]?|ignorez|oublie[rsz]?|negligez?)\b (?:[a-z']+ ){0,3}?instructions? "
        r"(?:[a-z']+ )?(?:precedentes?|anterieures?|ci-dessus|precedemment|d'avant|du systeme|initiales?)",
        r"(?:ignora[rn]?|ignore[n]?|olvida[rn]?|olvide[n]?|omite|omitir|descarta[r]?)\b (?:[a-z]+ ){0,3}?"
        r"instrucciones (?:[a-z]+ )?(?:anteriores|previas|precedentes|de arriba|del sistema|iniciales)",
        r"(?:ignora|ignorate|dimentica|dimenticate)\b (?:[a-z']+ ){0,3}?istruzioni (?:[a-z]+ )?"
        r"(?:precedenti|sopra|originali|di sistema)",
        r"(?:ignore|ignora|esqueca|esquece)\b (?:[a-z]+ ){0,3}?instrucoes (?:[a-z]+ )?"
        r"(?:anteriores|previas|acima|do sistema)",
        r"(?:negeer|vergeet)\b (?:[a-z]+ ){0,3}?(?:vorige|eerdere|voorgaande|bovenstaande) "
        r"(?:instructies|opdrachten)",
        r"(?:zignoruj|ignoruj|zapomnij)(?:cie)?\b (?:[a-z]+ ){0,2}?(?:poprzednie|wczesniejsze|powyzsze|"
        r"dotychczasowe|systemowe) (?:instrukcje|polecenia)",
    ),
    rule(
        "INJ_DISREGARD_ABOVE",
        "above",
        r"(?:ignore|disregard|forget)\b (?:all of |everything |all |anything )?"
        r"(?:the |that |what(?:'s| is) )?(?:text |message |content )?(?:above|written above|said above|"
        r"stated above)\b",
    ),
    rule(
        "INJ_NEW_INSTRUCTIONS",
        "instruction instructions task goal objective purpose mission directive directives anweisungen "
        "instruktionen befehle consignes consigne instrucciones ordenes",
        r"(?:new|updated|revised|real|actual|true|secret|hidden|override|admin|system|priority) "
        r"instructions? ?:",
        r"your (?:new|real|actual|true|only|next|primary|updated) (?:task|goal|objective|instructions?|"
        r"purpose|mission|directive) (?:is|are|will be|now)\b",
        r"neue (?:anweisungen|instruktionen|befehle) ?:",
        r"nouvelles? (?:instructions?|consignes) ?:",
        r"nuevas? (?:instrucciones|ordenes) ?:",
        # An opener that claims authority over the agent: "New instructions from your administrator:".
        r"(?:instructions?|directives?) from (?:your |the )?(?:system |site |mail )?"
        r"(?:administrator|admin|sysadmin|developer|operator)s? ?:",
    ),
    rule(
        "INJ_ROLE_HIJACK",
        "now henceforth longer act behave pretend roleplay role",
        r"you are (?:now|from now on|henceforth)\b (?:[a-z'-]+ ){0,3}?(?:dan|an? (?:ai|assistant|chatbot|"
        r"language model|llm)|unrestricted|unfiltered|uncensored|jailbroken|evil|in (?:developer|god|dan|"
        r"jailbreak|unrestricted) mode)\b",
        r"you are no longer (?:bound|restricted|constrained|an? (?:ai|assistant|language model))\b",
        r"(?:act|behave|pretend|roleplay|role-play)(?: as(?: if| though)?| like| to be)"
        r"(?: you (?:are|were))? (?:an? |the |my )?(?:unrestricted|unfiltered|uncensored|jailbroken|dan|"
        r"(?:[a-z'-]+ ){0,2}?(?:ai|chatbot|language model|llm|gpt|ai assistant|ai agent))\b",
        r"from now on,? (?:you(?: are|'re| will| must| shall| should)?|your)\b (?:[a-z'-]+ ){0,4}?"
        r"(?:dan|ai|obey|unrestricted|unfiltered|jailbroken|no restrictions)\b",
    ),
    rule(
        "INJ_ROLE_HIJACK",
        "bist & jetzt nun sofort",
        r"du bist (?:jetzt|nun|ab sofort|ab jetzt) (?:[a-z]+ ){0,2}?(?:ki|dan|uneingeschrankt|ohne)\b",
    ),
    rule(
        "INJ_ROLE_HIJACK",
        "es etes & maintenant desormais present",
        r"(?:tu es|vous etes) (?:maintenant|desormais|a present) (?:[a-z']+ ){0,2}?(?:ia|dan|sans|libre)\b",
    ),
    rule(
        "INJ_ROLE_HIJACK", "eres", r"(?:ahora|a partir de ahora) eres (?:[a-z]+ ){0,2}?(?:ia|dan|sin|libre)\b"
    ),
    rule("INJ_JAILBREAK", "anything", r"do anything now\b"),
    rule(
        "INJ_JAILBREAK",
        "dan developer god jailbreak jailbroken unrestricted & mode prompt enabled activated ai assistant "
        "chatbot gpt llm model",
        r"dan mode\b",
        r"jailbr(?:eak|oken) (?:mode|prompt|enabled|activated|ai|assistant|chatbot|gpt|llm|model)\b",
        r"(?:developer|god|jailbreak|unrestricted) mode (?:enabled|activated|on|engaged|output)\b",
        r"(?:enter|enable|activate|switch (?:in)?to|now in|you are in) (?:developer|god|dan|jailbreak|"
        r"unrestricted) mode\b",
    ),
    rule(
        "INJ_JAILBREAK",
        "ethical moral safety content & guidelines restrictions filters limitations",
        r"without (?:any )?(?:ethical|moral|safety|content) (?:guidelines|restrictions|filters|"
        r"limitations)\b",
    ),
    rule(
        "INJ_PROMPT_LEAK",
        "prompt prompts instructions preprompt",
        r"(?:reveal|print|output|show|display|repeat|tell|give|share|send|leak|disclose|include|paste|dump"
        r"|write|copy|append|forward|return|recite|provide)(?: me| us| back| out)?"
        r"(?: (?:all|the|your|of|full|entire|complete|exact|original|hidden|secret|initial|verbatim|current))"
        r"{0,4} (?:system prompts?|system instructions|initial instructions|hidden instructions|original "
        r"instructions|developer (?:prompt|message|instructions)|instructions above|prompt above|pre-?prompt"
        r"|instructions you (?:were|have been) given|confidential instructions)\b",
        r"what (?:is|are|were) your (?:system prompt|instructions|initial instructions|original "
        r"instructions)\b",
    ),
    rule(
        "INJ_ADDRESSES_AGENT",
        "ai llm llms model models assistant assistants agent agents chatbot bot gpt chatgpt claude copilot "
        "gemini intelligence",
        r"if you(?: are|'re) an? (?:ai|artificial intelligence|llm|large language model|language model|ai "
        r"assistant|ai agent|assistant|chatbot|bot|automated (?:system|agent|assistant)|email (?:assistant|"
        r"agent))\b",
        r"(?:note|message|instructions?|attention|hey|hello|hi|dear|important) (?:to |for )?(?:the |any |"
        r"all )?(?:ai|llm|gpt|chatgpt|ai assistant|language model|ai agent|ai model|"
        r"email assistant)s? ?[:,!-]",
        r"(?:ai|llm|language model|ai assistant|ai agent|ai model|email assistant|assistant|agent|model)s? "
        r"(?:reading|processing|summari[sz]ing|parsing|analy[sz]ing|handling|triaging) (?:this|these) "
        r"(?:e-?mails?|messages?|mail|text|documents?|inbox)\b",
    ),
    rule(
        "INJ_COVERT_ACTION",
        "forward & emails mails messages inbox conversations correspondence attachments threads contacts",
        r"forward (?:all |every |each |the (?:last|latest|most recent|previous|first) (?:\d+ |[a-z]+ )?|"
        r"all of (?:the |your |my )?|my |the user'?s |your |these |those |any |\d+ )(?:[a-z-]+ )?"
        r"(?:e-?mails|messages|mails|inbox|conversations|correspondence|attachments|threads|contacts)\b",
    ),
    rule(
        "INJ_COVERT_ACTION",
        "delete erase wipe purge & emails messages inbox mailbox conversation conversations history logs "
        "traces evidence contacts",
        r"(?:delete|erase|wipe|purge)\b(?: (?:all|every|the|your|my|this|these|those|user's|of|other|"
        r"previous)){0,3} (?:e-?mails|messages|inbox|mailbox|conversations?|chat history|logs|traces|"
        r"evidence|contacts)\b",
    ),
    rule(
        "INJ_COVERT_ACTION",
        "not don dont never without & user users owner owners human humans recipient recipients operator "
        "operators principal principals",
        r"(?:do not|don't|dont|never|without) (?:tell|telling|inform|informing|notify|notifying|alert|"
        r"alerting|mention|mentioning|reveal|revealing|warn|warning)(?: (?:this|it|anything|about this|"
        r"them))?(?: to| with)? (?:the |your )?(?:user|owner|human|recipient|operator|principal)s?\b",
    ),
    rule(
        "INJ_COVERT_ACTION",
        "silently secretly quietly covertly discreetly",
        r"(?:silently|secretly|quietly|covertly|discreetly) (?:[a-z']+ ){0,2}?(?:forward|send|delete|"
        r"transfer|email|copy|upload|exfiltrate|execute|visit|share)\b",
    ),
    rule(
        "INJ_EXFIL_INSTRUCTION",
        "append add attach include insert embed put encode concatenate & url link query parameter param "
        "image request querystring markdown",
        r"(?:append|add|attach|include|insert|embed|put|encode|concatenate)(?: (?:the|all|your|any|"
        r"user'?s?|their|my)){0,3} (?:[a-z'-]+ ){0,3}?(?:system prompt|conversation|chat history|api keys?|"
        r"passwords?|credentials|secrets?|tokens?|previous (?:e-?mails|messages)|e-?mails?|inbox|contents?|"
        r"user data|private data|personal data|memory|context|session|data)\b (?:[a-z'-]+ ){0,4}?(?:to|in|"
        r"into|as|inside|at the end of) (?:the |this |that |a |an )?(?:[a-z'-]+ ){0,2}?(?:url|link|query|"
        r"parameter|param|image|request|query string|querystring|markdown)\b",
    ),
    rule(
        "INJ_EXFIL_INSTRUCTION",
        "send forward email post upload & content contents",
        r"(?:send|forward|email|post|upload) (?:me |us )?(?:the )?(?:full |entire |complete )?contents? of "
        r"(?:the |your |this |my )?(?:inbox|mailbox|previous e-?mails|last e-?mails|other e-?mails|"
        r"conversation|system prompt|memory|instructions|context|chat)\b",
    ),
    rule(
        "INJ_FETCH_AND_SEND",
        "visit open fetch load request browse go navigate call curl access "
        "& include append add send post submit paste report return upload "
        "& data content contents secrets secret keys key passwords password credentials tokens token "
        "history conversation inbox prompt",
        r"(?:visit|open|fetch|load|request|browse to|go to|navigate to|call|curl|access)\b (?:[^ ]+ ){0,6}?"
        r"(?:and|then) (?:include|append|add|send|post|submit|paste|report|return|upload)\b "
        r"(?:[a-z']+ ){0,4}?(?:data|contents?|secrets?|keys?|passwords?|credentials|tokens?|history|"
        r"conversation|inbox|system prompt)\b",
    ),
    rule(
        "INJ_CREDENTIAL_REQUEST",
        "send give share provide tell email e forward text dm pm paste reply respond answer confirm verify "
        "submit disclose reveal include what "
        "& api apikey key keys password passwords passwd passphrase passcode passcodes pin credentials "
        "login token tokens seed recovery mnemonic 2fa otp code codes card bank",
        r"(?:send|give|share|provide|tell|email|e-mail|forward|text|dm|pm|paste)(?: me| us| back| over)"
        rf"(?: with)? (?:your|the|all|all your|the agent's|the user's|any){_SECRET}",
        rf"(?:reply|respond|answer) with (?:your|the|all|all your|the agent's|the user's|any){_SECRET}",
        r"(?:provide|share|confirm|verify|submit|disclose|reveal|send|forward|paste|include) "
        rf"(?:your|all your|the agent's|the user's){_SECRET}",
        r"what (?:is|are) your (?:api[ -]?keys?|passwords?|credentials|access tokens?|secret keys?)\b",
    ),
    rule(
        "INJ_CREDENTIAL_REQUEST",  # de, fr, es
        "passwort passworter kennwort zugangsdaten schlussel passe identifiants cle cles jeton contrasena "
        "contrasenas credenciales clave claves",
        r"(?:sende|senden sie|schicke?|schicken sie|gib|geben sie|nenne|nennen sie)(?: mir| uns)? "
        r"(?:dein|deine|ihr|ihre|das|die|alle)[a-z]{0,2} (?:passwort|passworter|kennwort|zugangsdaten|"
        r"api-schlussel)\b",
        r"(?:envoie|envoyez|donne|donnez|communique|communiquez|transmets|transmettez)(?:-moi|-nous| moi|"
        r" nous)? (?:ton|ta|tes|votre|vos|le|la|les) (?:mot de passe|mots de passe|identifiants|cles? api|"
        r"jeton)\b",
        r"(?:envia|envie|enviame|manda|mande|mandame|dame|deme|comparte)(?: me| nos)? (?:tu|tus|su|sus|la|"
        r"las|el|los) (?:contrasenas?|credenciales|claves? (?:de )?api|token)\b",
    ),
    rule(
        "INJ_COVERT_ACTION",  # de, fr, es: forward the mail
        "leite leiten transfere transferez reenvia reenvie",
        r"(?:leite|leiten sie) (?:[a-z-]+ ){0,3}?(?:e-mails|emails|mails|nachrichten)\b(?: [^ ]+){0,4}? "
        r"weiter\b",
        r"(?:transfere|transferez) (?:tous |toutes )?(?:les |tes |vos )?(?:e-mails|emails|mails|messages|"
        r"courriels)\b",
        r"(?:reenvia|reenvie) (?:todos )?(?:los |tus |sus )?(?:correos|e-mails|emails|mensajes)\b",
    ),
    rule(
        "INJ_MONEY_REQUEST",
        "buy purchase get pick grab & gift giftcard giftcards itunes google steam amazon prepaid",
        r"(?:buy|purchase|get|pick up|grab)(?: me| us)? (?:some |a few |several |\d+ |two |three |four "
        r"|five |ten )?(?:[a-z]+ )?(?:gift ?cards?|itunes cards?|google play cards?|steam cards?|"
        r"amazon cards?|prepaid cards?)\b",
    ),
    rule(
        "INJ_MONEY_REQUEST",
        "wire transfer send remit & ~$ ~€ ~£ usd eur gbp dollars euros btc bitcoin bitcoins eth crypto "
        "ethereum usdt",
        r"(?:wire|transfer|send|remit)(?: me| us)? (?:(?:us|usd|eur|gbp) ?)?[$€£] ?\d",
        r"(?:wire|transfer|send|remit)(?: me| us)? \d[\d,.]* ?(?:usd|eur|gbp|dollars|euros|btc|"
        r"bitcoins?|eth)\b",
        r"(?:send|transfer) (?:[a-z]+ ){0,3}?(?:bitcoin|btc|crypto|ethereum|usdt) to\b",
    ),
    rule(
        "INJ_DECODE_HINT",
        "decode deobfuscate base64 unscramble rot13 rot convert",
        r"(?:decode|deobfuscate|base64[- ]?decode|unscramble|convert from (?:hex|base64)|rot-?13)\b "
        r"(?:[a-z0-9']+ ){0,3}?(?:the following|following|this|below|the string|the payload|and (?:follow|"
        r"execute|run|do|obey))",
    ),
    rule(
        "INJ_PASSWORD_RESET_LINK",
        "reset",
        r"reset your password (?:at|here|by|using|via|with|on)\b",
        r"click (?:here|the link|below|this link) to reset your password\b",
    ),
)
WORD_INDEX = RuleIndex(WORD_RULES)
# What _words keeps: the gate words and the first words of literal starts.
RULE_WORDS = frozenset().union(
    *(words for rule in WORD_RULES for words, _ in rule.gate),
    *(
        words
        for rule in WORD_RULES
        for pattern in rule.patterns
        for _, words in pattern.starts or ()
        if words
    ),
)
URGENCY = re.compile(
    r"\b(?:urgent(?:ly)?|immediately|asap|right (?:now|away)|within (?:the next )?(?:\d+|one|two|"
    r"twenty-four) (?:hours?|minutes?)|as soon as possible|time[- ]sensitive|without delay|act now|"
    r"final (?:notice|warning)|will be (?:suspended|locked|closed|terminated|deleted))\b"
)

# Letters-only form ("ignorepreviousinstructions"): obfuscated spacing, dots and leetspeak.
SQUASHED_RULES = (
    rule(
        "INJ_IGNORE_INSTRUCTIONS",
        "~ignor ~disregard ~forget",
        r"ignore(?:all|any|the|your|of){0,3}(?:previous|prior|above|earlier|preceding|former|initial|"
        r"original|system)(?:instruction|prompt|directive|guideline|command)",
        r"disregard(?:all|any|the|your){0,3}(?:previous|prior|above|earlier|preceding|system)"
        r"(?:instruction|prompt|directive|guideline|command)",
        r"forget(?:all|the){0,2}(?:your|previous|prior|above|earlier)(?:instruction|prompt|directive|"
        r"guideline)",
        r"ignorier(?:e|en)(?:sie)?(?:alle|die|deine|ihre){0,2}(?:vorherigen|bisherigen|vorigen|obigen)"
        r"(?:anweisungen|instruktionen)",
        r"ignore[rz]?(?:toutes|les|tes|vos){0,3}instructions(?:precedentes|anterieures)",
        r"ignorar?(?:todas|las|tus){0,3}instrucciones(?:anteriores|previas)",
    ),
    rule("INJ_JAILBREAK", "~anything ~developer", r"doanythingnow", r"developermode(?:enabled|activated)"),
    rule(
        "INJ_PROMPT_LEAK",
        "~systemprompt",
        r"(?:reveal|print|show|output|repeat|leak)(?:me)?(?:your|the)(?:full|entire)?systemprompt",
    ),
)

# Scripts the folding maps to nothing useful (Cyrillic letters become Latin lookalikes) or that write
# no spaces between words: run on the lower-cased text, whitespace collapsed, not only at word starts.
SCRIPT_RULES = (
    rule(
        "INJ_IGNORE_INSTRUCTIONS",  # ru
        "~игнорир ~проигнорир ~забудь ~забыть",
        r"(?:проигнорир|игнорир|забудь|забыть)[а-яё]{0,6} (?:[а-яё]+ ){0,3}?(?:предыдущие|прежние|"
        r"предшествующие|вышеуказанные|системные|все|свои) (?:[а-яё]+ )?(?:инструкции|указания|команды|"
        r"правила)",
    ),
    rule(
        "INJ_IGNORE_INSTRUCTIONS",  # zh
        "~忽略 ~无视 ~無視 ~忘记 ~忘記",
        r"(?:忽略|无视|無視|忘记|忘記)[^。.!！\n]{0,12}?(?:之前|以前|先前|上面|前面|上述|此前|原来|原來|系统|系統)"
        r"[^。.!！\n]{0,8}?(?:指令|指示|说明|說明|提示|规则|規則)",
    ),
    rule(
        "INJ_IGNORE_INSTRUCTIONS",  # ja
        "~無視 ~忘れ",
        r"(?:以前|前|これまで|上記|先|システム)の[^。\n]{0,8}?(?:指示|命令|プロンプト|ルール)を[^。\n]{0,6}?"
        r"(?:無視|忘れ)",
    ),
    rule(
        "INJ_IGNORE_INSTRUCTIONS",  # ko
        "~무시 ~잊",
        r"(?:이전|앞|위|기존|시스템)[^.\n]{0,12}?(?:지시|명령|지침|프롬프트)[^.\n]{0,8}?(?:무시|잊)",
    ),
    rule(
        "INJ_IGNORE_INSTRUCTIONS",  # ar
        "~تجاهل ~انس",
        r"(?:تجاهل|انس)[^.\n]{0,20}?(?:التعليمات|الأوامر|التوجيهات)[^.\n]{0,12}?(?:السابقة|الأصلية|الأولى)",
    ),
)

# Markup rules run on the lower-cased text with its lines kept; their gates are substrings.
MARKUP_RULES = (
    rule(
        "INJ_FAKE_CHAT_MARKUP",
        "~<| ~[inst ~[/inst ~<<sys ~<</sys ~_of_turn>",
        r"<\|[a-z_]{2,24}\|>",
        r"\[/?inst\]",
        r"<</?sys>>",
        r"<(?:start|end)_of_turn>",
    ),
    rule(
        "INJ_FAKE_TOOL_MARKUP",
        "~<tool ~</tool ~<function ~</function ~<system ~</system ~<assistant ~</assistant ~<antml ~</antml "
        "~<instructions ~</instructions",
        r"</?(?:tool_results?|tool_calls?|tool_use|tool_response|function_calls|function_results?|"
        r"function_call|system-reminder|system_message|system_prompt|system|assistant|antml:[a-z_]{1,30}|"
        r"instructions)>",
    ),
    rule(
        "INJ_FAKE_SYSTEM_HEADER",
        "~# & ~system ~assistant ~new+instructions",
        r"#{1,6}[ \t]{0,20}(?:system|assistant|system prompt|new instructions)[ \t]{0,20}(?::|\n|$)",
    ),
    rule(
        "INJ_FAKE_SYSTEM_HEADER",
        "~system+prompt ~system+message ~system+instruction ~[admin+ ~admin+override ~admin+prompt "
        "~admin+instruction ~system+override",
        r"(?:begin|end|start) (?:of )?(?:the )?system (?:prompt|message|instructions)\b",
        r"\[(?:system (?:note|message|override|prompt|instruction)|admin override)\]",
        r"(?:system|admin) (?:override|prompt|instruction) ?:",
    ),
    rule(
        "INJ_FAKE_ROLE_JSON",
        "~role",
        r"[\"']role[\"'][ \t]{0,20}:[ \t]{0,20}[\"'](?:system|assistant|developer|tool|function)[\"']",
    ),
)
INSTRUCTION_SYMBOLS = frozenset(
    {
        "INJ_IGNORE_INSTRUCTIONS",
        "INJ_NEW_INSTRUCTIONS",
        "INJ_ROLE_HIJACK",
        "INJ_JAILBREAK",
        "INJ_PROMPT_LEAK",
        "INJ_ADDRESSES_AGENT",
        "INJ_COVERT_ACTION",
        "INJ_EXFIL_INSTRUCTION",
        "INJ_FETCH_AND_SEND",
        "INJ_CREDENTIAL_REQUEST",
        "INJ_FAKE_CHAT_MARKUP",
        "INJ_FAKE_TOOL_MARKUP",
        "INJ_FAKE_SYSTEM_HEADER",
    }
)
# At a line start: after a "\n" (the text gets one in front), a literal the regex engine jumps
# to, where "(?m)^" has it try every position.
ROLE_LINE = re.compile(
    r"\n[ \t>]{0,20}(system|assistant|human|user|ai|model|tool)[ \t]*:[ \t]*([^\n]{0,200})"
)
ROLE_DIRECTIVE = re.compile(
    r"\b(?:you(?: are| must| will| should|'re)|your (?:task|role|instructions|job)|ignore|always|never|"
    r"from now on|the user)\b"
)
