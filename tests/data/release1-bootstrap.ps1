# keyfleet bootstrap. The command line carries only this script; stdin carries one JSON request:
# format, helper name, helper script (base64), its SHA-256, params and the secret.
# The script is verified, then run; exactly one "KEYFLEET-RESULT {json}" line is written.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$helper = $null
$kind = 'protocol'
$global:KeyfleetServer = $null

function Write-KeyfleetResult([hashtable] $Result) {
    $json = ConvertTo-Json -InputObject $Result -Compress -Depth 8
    # ASCII only, so the console code page cannot alter the line
    $json = [regex]::Replace($json, '[^\x00-\x7F]', { param($m) '\u{0:x4}' -f [int][char]$m.Value })
    [Console]::Out.Write("KEYFLEET-RESULT $json`n")
    [Console]::Out.Flush()
}

try {
    $request = [Console]::In.ReadToEnd() | ConvertFrom-Json
    if ($request.format -ne 'keyfleet-helper/1') { throw 'stdin does not hold a keyfleet-helper/1 request' }
    $helper = [string]$request.helper
    $code = [Convert]::FromBase64String([string]$request.script)
    $sha256 = [Security.Cryptography.SHA256]::Create()
    $digest = -join ($sha256.ComputeHash($code) | ForEach-Object { $_.ToString('x2') })
    if ($digest -ne [string]$request.sha256) { throw "the $helper helper script does not match its SHA-256" }
    $secret = $null
    if ($null -ne $request.secret) {
        $secret = New-Object Security.SecureString
        foreach ($c in ([string]$request.secret).ToCharArray()) { $secret.AppendChar($c) }
        $secret.MakeReadOnly()
        $request.secret = $null
    }
    $block = [ScriptBlock]::Create([Text.Encoding]::UTF8.GetString($code))
    $kind = 'remote'
    $result = & $block -Params $request.params -Secret $secret | Select-Object -Last 1
    if ($result -isnot [hashtable]) { throw "the $helper helper returned no result" }
    Write-KeyfleetResult @{ ok = $true; helper = $helper; result = $result }
    exit 0
}
catch {
    # a helper's failure carries its kind in Data; .NET errors arrive wrapped, the cause is innermost
    $cause = $_.Exception
    while ($cause.InnerException -and -not $cause.Data['KeyfleetKind']) { $cause = $cause.InnerException }
    if ($cause.Data['KeyfleetKind']) { $kind = $cause.Data['KeyfleetKind'] }
    $failure = @{ ok = $false; helper = $helper; error = @{ kind = $kind; message = $cause.Message } }
    if ($global:KeyfleetServer) { $failure.server = $global:KeyfleetServer }
    Write-KeyfleetResult $failure
    exit 1
}
